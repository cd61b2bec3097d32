import { useEffect, useRef, useState } from "preact/hooks";
import { timestampFromDate, timestampDate } from "@bufbuild/protobuf/wkt";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { userKeys, errorText } from "../api";
import type { ApiKey, GetKeyUsageResponse } from "../gen/keyhouse/v1/user_keys_pb";
import { when, plural } from "../format";
import { Empty, ErrorBox, Link, Loading, StatusBadge } from "../ui/common";

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const COUNT_STEPS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7].map((p) => m * p)).sort((a, b) => a - b);
const RANGES = [
  ["1", "Last 24 hours"],
  ["7", "Last 7 days"],
  ["30", "Last 30 days"],
] as const;

export function KeyUsage({ keyId }: { keyId: string }) {
  const [key, setKey] = useState<ApiKey | null>(null);
  const [usage, setUsage] = useState<GetKeyUsageResponse | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [days, setDays] = useState("7");
  const [perDay, setPerDay] = useState(false);
  const [range, setRange] = useState<[number, number]>([0, 0]);

  useEffect(() => {
    userKeys.getKey({ keyId }).then(setKey, (e) => setError(errorText(e)));
  }, [keyId]);

  useEffect(() => {
    setUsage(null);
    // Whole hours, so each bucket of the chart is one hour the server counted.
    const to = Math.ceil(Date.now() / HOUR) * HOUR;
    const from = to - Number(days) * DAY;
    setRange([from, to]);
    userKeys
      .getKeyUsage({ keyId, from: timestampFromDate(new Date(from)), to: timestampFromDate(new Date(to)) })
      .then(setUsage, (e) => setError(errorText(e)));
  }, [keyId, days]);

  const title = key ? `Usage of ${key.keyName}` : "Key usage";
  return (
    <>
      <p class="crumbs">
        <Link href="/keys">My keys</Link> <span aria-hidden="true">›</span> {key?.keyName ?? "Key"}
      </p>
      <h1>{title}</h1>
      <ErrorBox error={error} />
      {key && (
        <dl class="facts inline">
          <dt>Key</dt>
          <dd>
            <code>{key.keyPreview}</code>
          </dd>
          <dt>Status</dt>
          <dd>
            <StatusBadge status={key.status} />
          </dd>
          <dt>Expires</dt>
          <dd>{when(key.expiresAt, "Never")}</dd>
        </dl>
      )}
      <div class="filters">
        <label for="usage-range">Period</label>
        <select id="usage-range" value={days} onChange={(e) => setDays(e.currentTarget.value)}>
          {RANGES.map(([v, l]) => (
            <option value={v} key={v}>
              {l}
            </option>
          ))}
        </select>
        <label class="check">
          <input type="checkbox" checked={perDay} onChange={(e) => setPerDay(e.currentTarget.checked)} />
          Per day
        </label>
      </div>
      {usage === null ? (
        !error && <Loading what="usage" />
      ) : (
        <>
          <dl class="stats">
            <div>
              <dt>Requests in this period</dt>
              <dd>{usage.totalRequests.toLocaleString()}</dd>
            </div>
            <div>
              <dt>Last used</dt>
              <dd>{when(usage.lastUsed ?? key?.lastUsed, "Never used")}</dd>
            </div>
          </dl>
          {usage.totalRequests === 0n && (
            <Empty title="No requests in this period.">
              <p>Verification counts appear here within a minute of the key's use.</p>
            </Empty>
          )}
          <Chart usage={usage} range={range} perDay={perDay} />
        </>
      )}
    </>
  );
}

/** Buckets of `step` ms from `from` to `to`, with the hours of `usage` summed into them. */
function series(usage: GetKeyUsageResponse, [from, to]: [number, number], step: number) {
  const start = Math.floor(from / step) * step;
  const n = Math.max(1, Math.ceil((to - start) / step));
  const xs = new Array<number>(n);
  const ys = new Array<number>(n).fill(0);
  for (let i = 0; i < n; i++) xs[i] = (start + i * step) / 1000;
  for (const h of usage.hours) {
    if (!h.hour) continue;
    const i = Math.floor((timestampDate(h.hour).getTime() - start) / step);
    if (i >= 0 && i < n) ys[i] += Number(h.requests);
  }
  return [xs, ys] as [number[], number[]];
}

function Chart({ usage, range, perDay }: { usage: GetKeyUsageResponse; range: [number, number]; perDay: boolean }) {
  const box = useRef<HTMLDivElement>(null);
  const step = perDay ? DAY : HOUR;
  const [xs, ys] = series(usage, range, step);
  useEffect(() => {
    const el = box.current!;
    const width = () => Math.max(280, el.clientWidth);
    const plot = new uPlot(
      {
        width: width(),
        height: 260,
        // Each bar starts at its bucket's start and spans the bucket, so the axis ends one step
        // after the last start.
        scales: { x: { time: true, range: (_u, min, max) => [min, max + step / 1000] }, y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
        legend: { show: true },
        series: [
          {},
          {
            label: perDay ? "Requests per day" : "Requests per hour",
            stroke: "#1d4ed8",
            fill: "rgba(29, 78, 216, 0.12)",
            width: 2,
            paths: uPlot.paths.bars!({ size: [0.8, 40], align: 1 }),
            points: { show: false },
          },
        ],
        // Whole requests only on the count axis.
        axes: [{}, { label: "Requests", size: 60, incrs: COUNT_STEPS }],
      },
      [xs, ys],
      el,
    );
    const ro = new ResizeObserver(() => plot.setSize({ width: width(), height: 260 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.destroy();
    };
  }, [usage, perDay]);
  const total = ys.reduce((a, b) => a + b, 0);
  return (
    <figure class="chart">
      <div ref={box} class="chart-box" role="img" aria-label={`Chart of ${plural(total, "request")} ${perDay ? "per day" : "per hour"}`} />
      <figcaption>
        {perDay ? "Requests per day" : "Requests per hour"}, {plural(total, "request")} in total.
      </figcaption>
    </figure>
  );
}
