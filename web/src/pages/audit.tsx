import { useEffect, useId, useState } from "preact/hooks";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { platformKeys, errorText } from "../api";
import type { AuditEvent } from "../gen/keyhouse/v1/platform_keys_pb";
import { when, iso } from "../format";
import { Empty, ErrorBox, Loading } from "../ui/common";

const ACTIONS = [
  "user_key.create",
  "user_key.regenerate",
  "user_key.revoke",
  "provider_key.put",
  "provider_key.delete",
  "provider_key.test",
  "provider_key.hand_out",
  "platform_key.update",
  "platform_key.delete",
  "platform_key.rollback",
  "platform_key.decrypt",
  "platform_key.test",
  "platform_key.watch",
  "platform_key.synced",
];

interface Filters {
  actor: string;
  action: string;
  target: string;
  since: string;
  until: string;
}
const NONE: Filters = { actor: "", action: "", target: "", since: "", until: "" };

export function Audit() {
  const [filters, setFilters] = useState<Filters>(NONE);
  const [events, setEvents] = useState<AuditEvent[] | null>(null);
  const [next, setNext] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [more, setMore] = useState(false);
  const id = useId();

  const load = async (f: Filters, token = "") => {
    setError(null);
    if (token) setMore(true);
    else setEvents(null);
    try {
      const res = await platformKeys.listAuditEvents({
        actor: f.actor,
        action: f.action,
        target: f.target,
        since: f.since ? timestampFromDate(new Date(f.since)) : undefined,
        until: f.until ? timestampFromDate(new Date(f.until)) : undefined,
        pageSize: 50,
        pageToken: token,
      });
      setEvents((old) => (token && old ? [...old, ...res.events] : res.events));
      setNext(res.nextPageToken);
    } catch (e) {
      setError(errorText(e));
      setEvents((old) => old ?? []);
    } finally {
      setMore(false);
    }
  };
  useEffect(() => {
    load(filters);
  }, [filters]);

  const submit = (e: Event) => {
    e.preventDefault();
    const form = e.currentTarget as HTMLFormElement;
    const get = (n: string) => (form.elements.namedItem(n) as HTMLInputElement).value.trim();
    const f = { actor: get("actor"), action: get("action"), target: get("target"), since: get("since"), until: get("until") };
    if (f.since && f.until && new Date(f.since) >= new Date(f.until))
      return setError("until: must be later than since.");
    setFilters(f);
  };

  const filtered = Object.values(filters).some(Boolean);
  return (
    <>
      <h1>Audit log</h1>
      <p class="lead">Every change to a key and every read of a secret, newest first.</p>
      <form class="filter-form" onSubmit={submit} onReset={() => setFilters(NONE)} aria-label="Filter the audit log">
        <div>
          <label for={`${id}-actor`}>Actor</label>
          <input id={`${id}-actor`} name="actor" autocomplete="off" placeholder="user id" />
        </div>
        <div>
          <label for={`${id}-action`}>Action</label>
          <input id={`${id}-action`} name="action" list={`${id}-actions`} autocomplete="off" placeholder="e.g. platform_key.update" />
          <datalist id={`${id}-actions`}>
            {ACTIONS.map((a) => (
              <option value={a} key={a} />
            ))}
          </datalist>
        </div>
        <div>
          <label for={`${id}-target`}>Target</label>
          <input id={`${id}-target`} name="target" autocomplete="off" placeholder="key id or name" />
        </div>
        <div>
          <label for={`${id}-since`}>Since</label>
          <input id={`${id}-since`} name="since" type="datetime-local" />
        </div>
        <div>
          <label for={`${id}-until`}>Until</label>
          <input id={`${id}-until`} name="until" type="datetime-local" />
        </div>
        <div class="filter-actions">
          <button type="submit" class="primary">
            Apply filters
          </button>
          <button type="reset">Clear</button>
        </div>
      </form>
      <ErrorBox error={error} />
      {events === null ? (
        <Loading what="audit events" />
      ) : events.length === 0 ? (
        !error && <Empty title={filtered ? "No events match these filters." : "No audit events yet."} />
      ) : (
        <table class="cards audit">
          <caption class="sr-only">Audit events</caption>
          <thead>
            <tr>
              <th scope="col">Time</th>
              <th scope="col">Actor</th>
              <th scope="col">Identity</th>
              <th scope="col">Action</th>
              <th scope="col">Target</th>
              <th scope="col">Details</th>
            </tr>
          </thead>
          <tbody>
            {events.map((ev) => (
              <tr key={ev.id} data-action={ev.action}>
                <td data-label="Time">
                  <time dateTime={iso(ev.occurredAt)}>{when(ev.occurredAt)}</time>
                </td>
                <td data-label="Actor">{ev.actor}</td>
                <td data-label="Identity">
                  {ev.identitySource || "—"}
                  {ev.viaKeyId && <div class="muted">via key {ev.viaKeyId}</div>}
                </td>
                <th scope="row" data-label="Action">
                  <code>{ev.action}</code>
                </th>
                <td data-label="Target">{ev.target || "—"}</td>
                <td data-label="Details">
                  <Details json={ev.detailsJson} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {next && (
        <button type="button" class="more" disabled={more} onClick={() => load(filters, next)}>
          {more ? "Loading…" : "Load more"}
        </button>
      )}
    </>
  );
}

function Details({ json }: { json: string }) {
  if (!json || json === "{}" || json === "null") return <span class="muted">—</span>;
  try {
    const obj = JSON.parse(json);
    if (obj && typeof obj === "object" && !Array.isArray(obj)) {
      return (
        <dl class="details">
          {Object.entries(obj).map(([k, v]) => (
            <div key={k}>
              <dt>{k}</dt>
              <dd>{typeof v === "string" ? v : JSON.stringify(v)}</dd>
            </div>
          ))}
        </dl>
      );
    }
  } catch {
    // shown as text below
  }
  return <code class="wrap">{json}</code>;
}
