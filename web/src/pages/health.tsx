import { useEffect, useState } from "preact/hooks";
import { platformKeys, errorText } from "../api";
import type { KeyHealthCheck, PlatformKey } from "../gen/keyhouse/v1/platform_keys_pb";
import { when, iso } from "../format";
import { Empty, ErrorBox, Link, Loading } from "../ui/common";
import { HealthSummary, errorClassLabel } from "./platform";

const PAGE = 25;

/** A platform key's live tests, scheduled and manual, newest first, a page at a time. */
export function PlatformKeyHealth({ name }: { name: string }) {
  const [key, setKey] = useState<PlatformKey | null>(null);
  const [checks, setChecks] = useState<KeyHealthCheck[] | null>(null);
  const [next, setNext] = useState("");
  const [more, setMore] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const load = async (token = "") => {
    setError(null);
    if (token) setMore(true);
    else setChecks(null);
    try {
      const res = await platformKeys.listPlatformKeyHealth({ name, pageSize: PAGE, pageToken: token });
      setChecks((old) => (token && old ? [...old, ...res.checks] : res.checks));
      setNext(res.nextPageToken);
    } catch (e) {
      setError(errorText(e));
      setChecks((old) => old ?? []);
    } finally {
      setMore(false);
    }
  };
  const title = key?.displayName ?? name;
  useEffect(() => {
    load();
    platformKeys.listPlatformKeys({}).then(
      (r) => setKey(r.keys.find((k) => k.name === name) ?? null),
      () => setKey(null),
    );
  }, [name]);

  return (
    <>
      <p class="crumbs">
        <Link href="/admin/platform-keys">Platform keys</Link> <span aria-hidden="true">›</span> {title}
      </p>
      <h1>Health history of {title}</h1>
      <p class="lead">
        Every live test of <code>{name}</code>, scheduled or run by an admin, newest first. The history never holds
        the key.
      </p>
      {key && (
        <p>
          Now: <HealthSummary k={key} />
        </p>
      )}
      <ErrorBox error={error} />
      {checks === null ? (
        <Loading what="health checks" />
      ) : checks.length === 0 ? (
        !error && (
          <Empty title="No health checks yet.">
            <p>Scheduled checks run once a value is set; an admin can also press Test on the platform keys page.</p>
          </Empty>
        )
      ) : (
        <table class="cards health">
          <caption class="sr-only">Health checks of {title}</caption>
          <thead>
            <tr>
              <th scope="col">Tested</th>
              <th scope="col">Status</th>
              <th scope="col">Latency</th>
              <th scope="col">HTTP status</th>
              <th scope="col">Error</th>
              <th scope="col">Trigger</th>
            </tr>
          </thead>
          <tbody>
            {checks.map((c, i) => (
              <tr key={i} data-status={c.status} data-trigger={c.trigger}>
                <th scope="row" data-label="Tested">
                  <time dateTime={iso(c.testedAt)}>{when(c.testedAt)}</time>
                </th>
                <td data-label="Status">
                  <span class={`badge badge-${c.status}`}>{c.status}</span>
                </td>
                <td data-label="Latency">{`${c.latencyMs.toString()} ms`}</td>
                <td data-label="HTTP status">{c.statusCode ? c.statusCode : "No answer"}</td>
                <td data-label="Error">{c.errorClass ? errorClassLabel(c.errorClass) : "—"}</td>
                <td data-label="Trigger">{c.trigger === "manual" ? "manual (Test)" : c.trigger === "schedule" ? "scheduled" : c.trigger}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {next && (
        <button type="button" class="more" disabled={more} onClick={() => load(next)}>
          {more ? "Loading…" : "Load more"}
        </button>
      )}
    </>
  );
}
