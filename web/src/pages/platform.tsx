import { useEffect, useId, useState } from "preact/hooks";
import { platformKeys, errorText } from "../api";
import type {
  AuditEvent,
  PlatformKey,
  PlatformKeyVersion,
  TestPlatformKeyResponse,
} from "../gen/keyhouse/v1/platform_keys_pb";
import { when, iso } from "../format";
import { Confirm, Empty, ErrorBox, Link, Loading, Modal, Notice, SecretBox } from "../ui/common";

type Health = { busy: true } | { busy: false; result?: TestPlatformKeyResponse; error?: string };
const REVEAL_MS = 30_000;

export function PlatformKeys() {
  const [keys, setKeys] = useState<PlatformKey[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [health, setHealth] = useState<Record<string, Health>>({});
  const [updating, setUpdating] = useState<PlatformKey | null>(null);
  const [versions, setVersions] = useState<PlatformKey | null>(null);
  const [deleting, setDeleting] = useState<PlatformKey | null>(null);
  const [revealing, setRevealing] = useState<PlatformKey | null>(null);
  const [synced, setSynced] = useState<Synced | null>(null);
  const [syncError, setSyncError] = useState<string | null>(null);

  const load = async () => {
    setError(null);
    try {
      const list = (await platformKeys.listPlatformKeys({})).keys;
      setKeys(list);
      lastSyncs(list.map((k) => k.name)).then(
        (s) => {
          setSynced(s);
          setSyncError(null);
        },
        (e) => setSyncError(errorText(e)),
      );
    } catch (e) {
      setError(errorText(e));
      setKeys((k) => k ?? []);
    }
  };
  useEffect(() => {
    load();
  }, []);

  const test = async (k: PlatformKey) => {
    setHealth((h) => ({ ...h, [k.name]: { busy: true } }));
    try {
      const result = await platformKeys.testPlatformKey({ name: k.name });
      setHealth((h) => ({ ...h, [k.name]: { busy: false, result } }));
      // The test is stored as the key's health: show the server's view of it.
      await load();
    } catch (e) {
      setHealth((h) => ({ ...h, [k.name]: { busy: false, error: errorText(e) } }));
    }
  };

  return (
    <>
      <h1>Platform keys</h1>
      <p class="lead">
        The platform's own provider secrets, encrypted at rest and versioned. Every reveal is recorded in the audit
        log.
      </p>
      {notice && <Notice>{notice}</Notice>}
      <ErrorBox error={error} />
      <ErrorBox error={syncError} title="The LiteLLM sync status could not be read:" />
      {keys === null ? (
        <Loading what="platform keys" />
      ) : keys.length === 0 ? (
        !error && <Empty title="No platform keys are in the catalog." />
      ) : (
        <ul class="card-list">
          {keys.map((k) => (
            <li class="card" key={k.name} data-platform-key={k.name}>
              <div class="card-head">
                <h2>
                  {k.displayName} <code class="muted">{k.name}</code>
                </h2>
                <span class={`badge badge-source-${k.source}`}>{sourceLabel(k.source)}</span>
              </div>
              {k.description && <p class="muted">{k.description}</p>}
              <dl class="facts">
                <dt>Value</dt>
                <dd>{k.hasKey ? <code>{k.keyPreview}</code> : "Not set"}</dd>
                <dt>Version</dt>
                <dd data-version={k.version.toString()}>{k.version > 0n ? `v${k.version}` : "None stored"}</dd>
                <dt>Last updated</dt>
                <dd>{when(k.lastUpdated)}</dd>
                <dt>Fallback</dt>
                <dd>
                  <code>{k.envVar}</code>
                </dd>
                <dt>Health</dt>
                <dd data-health={k.healthStatus || "unknown"}>
                  <HealthSummary k={k} />
                  <div role="status">
                    <HealthText h={health[k.name]} />
                  </div>
                </dd>
                <dt>LiteLLM</dt>
                <dd data-synced>{synced === null ? (syncError ? "—" : "Loading…") : <SyncText e={synced[k.name]} />}</dd>
              </dl>
              <div class="row-actions">
                <button type="button" class="small primary" onClick={() => setUpdating(k)} aria-label={`Update ${k.displayName}`}>
                  Update
                </button>
                <button type="button" class="small" onClick={() => setVersions(k)} aria-label={`Versions of ${k.displayName}`}>
                  Versions
                </button>
                <button
                  type="button"
                  class="small"
                  disabled={!k.hasKey || health[k.name]?.busy}
                  onClick={() => test(k)}
                  aria-label={`Test ${k.displayName}`}
                >
                  Test
                </button>
                <Link class="button small" href={`/admin/platform-keys/${encodeURIComponent(k.name)}/health`} aria-label={`Health history of ${k.displayName}`}>
                  Health history
                </Link>
                <button type="button" class="small" disabled={!k.hasKey} onClick={() => setRevealing(k)} aria-label={`Reveal ${k.displayName}`}>
                  Reveal
                </button>
                {k.source === "database" && (
                  <button type="button" class="small danger" onClick={() => setDeleting(k)} aria-label={`Delete stored value of ${k.displayName}`}>
                    Delete stored value
                  </button>
                )}
              </div>
            </li>
          ))}
        </ul>
      )}
      {updating && (
        <Update
          k={updating}
          onClose={() => setUpdating(null)}
          onSaved={(msg) => {
            setUpdating(null);
            setNotice(msg);
            load();
          }}
        />
      )}
      {versions && (
        <Versions
          k={versions}
          onClose={() => setVersions(null)}
          onRolledBack={(msg) => {
            setNotice(msg);
            load();
          }}
        />
      )}
      {deleting && (
        <Confirm
          title={`Delete the stored ${deleting.displayName} value?`}
          confirmLabel="Delete stored value"
          danger
          onClose={() => setDeleting(null)}
          onConfirm={async () => {
            const res = await platformKeys.deletePlatformKey({ name: deleting.name });
            setDeleting(null);
            setNotice(`${res.message || "Deleted."} Now in use: ${sourceLabel(res.source)}.`);
            await load();
          }}
        >
          <p>
            The value stored in the database is removed. If <code>{deleting.envVar}</code> is set in keyhouse's
            environment, that value applies again; otherwise the key is not set.
          </p>
        </Confirm>
      )}
      {revealing && <Reveal k={revealing} onClose={() => setRevealing(null)} />}
    </>
  );
}

function sourceLabel(s: string): string {
  return { database: "Stored in database", environment: "From environment", not_set: "Not set" }[s] ?? s;
}

const ERROR_CLASSES: Record<string, string> = {
  auth: "rejected the key (auth)",
  network: "network error",
  refused: "connection refused",
  timeout: "timed out",
  server: "provider server error",
  http: "unexpected HTTP answer",
};

export function errorClassLabel(c: string): string {
  return ERROR_CLASSES[c] ?? c;
}

/** The server's view of a key's health: from the last live test, scheduled or manual. */
export function HealthSummary({ k }: { k: PlatformKey }) {
  const status = k.healthStatus || "unknown";
  const word = { healthy: "Healthy", unhealthy: "Unhealthy" }[status] ?? "Unknown";
  return (
    <span class="health-summary">
      <span class={`badge badge-${status}`}>{word}</span>{" "}
      {k.lastTested ? (
        <span>
          tested {when(k.lastTested)}, {k.lastLatencyMs.toString()} ms
          {k.healthError && <>, {errorClassLabel(k.healthError)}</>}
        </span>
      ) : (
        <span class="muted">{k.hasKey ? "not tested yet" : "no value to test"}</span>
      )}
    </span>
  );
}

/** The newest `platform_key.synced` event of each key, by name; a key without one is absent. */
type Synced = Record<string, AuditEvent>;

/**
 * One call for all keys; only when that page does not reach back far enough, one call for each
 * key it did not cover.
 */
async function lastSyncs(names: string[]): Promise<Synced> {
  const action = "platform_key.synced";
  const out: Synced = {};
  const res = await platformKeys.listAuditEvents({ action, pageSize: 100 });
  for (const e of res.events) out[e.target] ??= e;
  if (res.nextPageToken) {
    const missing = names.filter((n) => !out[n]);
    const found = await Promise.all(
      missing.map((target) => platformKeys.listAuditEvents({ action, target, pageSize: 1 }).then((r) => r.events[0])),
    );
    for (const e of found) if (e) out[e.target] = e;
  }
  return out;
}

function SyncText({ e }: { e: AuditEvent | undefined }) {
  if (!e) return <span class="muted">Not synced</span>;
  let d: { version?: number; target?: string; source?: string } = {};
  try {
    d = JSON.parse(e.detailsJson);
  } catch {
    // shown without details
  }
  const target = !d.target || d.target === "litellm" ? "LiteLLM" : d.target;
  const what =
    d.source === "not_set" ? "removed" : d.source === "environment" ? "environment value" : `version ${d.version ?? "?"}`;
  return (
    <span>
      Synced to {target}: {what}, <time dateTime={iso(e.occurredAt)}>{when(e.occurredAt)}</time>
    </span>
  );
}

function HealthText({ h }: { h: Health | undefined }) {
  if (!h) return null;
  if (h.busy) return <span>Testing…</span>;
  if (h.error) return <span class="error-text">Test failed: {h.error}</span>;
  const r = h.result!;
  return (
    <span class={r.ok ? "ok-text" : "error-text"}>
      Test just now: <strong>{r.ok ? "OK" : "Failed"}</strong>
      {r.statusCode ? `, HTTP ${r.statusCode}` : ""}
      {r.latencyMs ? `, ${r.latencyMs.toString()} ms` : ""}
      {r.detail ? ` — ${r.detail}` : ""}
    </span>
  );
}

function Update({ k, onClose, onSaved }: { k: PlatformKey; onClose: () => void; onSaved: (m: string) => void }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const id = useId();
  const format = k.keyFormat;
  return (
    <Modal title={`Update ${k.displayName}`} onClose={onClose}>
      <form
        class="dialog-body"
        novalidate
        onSubmit={async (e) => {
          e.preventDefault();
          const input = (e.currentTarget as HTMLFormElement).elements.namedItem("secret") as HTMLInputElement;
          const apiKey = input.value.trim();
          if (!apiKey) return setError("api_key: enter the new value.");
          setBusy(true);
          setError(null);
          try {
            const res = await platformKeys.updatePlatformKey({ name: k.name, apiKey });
            input.value = "";
            onSaved(`${res.message} (v${res.version}).${res.nextSteps.length ? " " + res.nextSteps.join(" ") : ""}`);
          } catch (err) {
            setError(errorText(err));
            setBusy(false);
          }
        }}
      >
        <p>The new value becomes version {k.version + 1n}; earlier versions are kept for rollback.</p>
        <label for={`${id}-secret`}>New value</label>
        <input
          id={`${id}-secret`}
          name="secret"
          type="password"
          autocomplete="off"
          spellcheck={false}
          autofocus
          aria-describedby={`${id}-hint`}
        />
        <p class="hint" id={`${id}-hint`}>
          {format ? (
            <>
              Format: <code>{format}</code>
            </>
          ) : (
            "At least 10 characters."
          )}
        </p>
        <ErrorBox error={error} />
        <div class="actions">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            {busy ? "Saving…" : "Save new version"}
          </button>
        </div>
      </form>
    </Modal>
  );
}

function Versions({ k, onClose, onRolledBack }: { k: PlatformKey; onClose: () => void; onRolledBack: (m: string) => void }) {
  const [list, setList] = useState<PlatformKeyVersion[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [rollback, setRollback] = useState<PlatformKeyVersion | null>(null);
  const load = () =>
    platformKeys.listPlatformKeyVersions({ name: k.name }).then(
      (r) => setList(r.versions),
      (e) => {
        setError(errorText(e));
        setList([]);
      },
    );
  useEffect(() => {
    load();
  }, []);
  if (rollback)
    return (
      <Confirm
        title={`Roll back to version ${rollback.version}?`}
        confirmLabel={`Roll back to v${rollback.version}`}
        onClose={() => setRollback(null)}
        onConfirm={async () => {
          const res = await platformKeys.rollbackPlatformKey({ name: k.name, version: rollback.version });
          setRollback(null);
          onRolledBack(`${k.displayName} rolled back to v${rollback.version}, stored as v${res.version}.`);
          setList(null);
          await load();
        }}
      >
        <p>
          {k.displayName} uses the value of version {rollback.version} (<code>{rollback.keyPreview}</code>) again, at
          once. It is recorded as a new version.
        </p>
      </Confirm>
    );
  return (
    <Modal title={`Versions of ${k.displayName}`} onClose={onClose} wide>
      <div class="dialog-body">
        <ErrorBox error={error} />
        {list === null ? (
          <Loading what="versions" />
        ) : list.length === 0 ? (
          !error && <Empty title="No stored versions.">{k.source === "environment" && <p>The value comes from the environment.</p>}</Empty>
        ) : (
          <table class="cards">
            <thead>
              <tr>
                <th scope="col">Version</th>
                <th scope="col">Value</th>
                <th scope="col">Stored</th>
                <th scope="col">By</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {list.map((v) => (
                <tr key={v.version.toString()} data-version={v.version.toString()}>
                  <th scope="row" data-label="Version">
                    v{v.version.toString()}
                    {v.isCurrent && <span class="badge badge-active">current</span>}
                    {v.rolledBackFrom > 0n && <span class="muted"> (rollback to v{v.rolledBackFrom.toString()})</span>}
                  </th>
                  <td data-label="Value">
                    <code>{v.keyPreview}</code>
                  </td>
                  <td data-label="Stored">{when(v.createdAt)}</td>
                  <td data-label="By">{v.createdBy}</td>
                  <td>
                    {!v.isCurrent && (
                      <button type="button" class="small" onClick={() => setRollback(v)} aria-label={`Roll back to version ${v.version}`}>
                        Roll back
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <div class="actions">
          <button type="button" onClick={onClose}>
            Close
          </button>
        </div>
      </div>
    </Modal>
  );
}

/** Reveal: confirm, give a reason (audited), show the secret, and drop it after 30 seconds. */
function Reveal({ k, onClose }: { k: PlatformKey; onClose: () => void }) {
  const [secret, setSecret] = useState<{ value: string; warning: string; source: string } | null>(null);
  const [hidden, setHidden] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const id = useId();
  useEffect(() => {
    if (!secret) return;
    const t = setTimeout(() => {
      setSecret(null);
      setHidden(true);
    }, REVEAL_MS);
    return () => clearTimeout(t);
  }, [secret]);

  return (
    <Modal title={`Reveal ${k.displayName}`} onClose={onClose}>
      <div class="dialog-body">
        {secret ? (
          <>
            <SecretBox secret={secret.value} label={`${k.displayName} (${secret.source})`} warning={secret.warning || "This is the full API key. Keep it secure."} />
            <p class="hint">It is hidden again in 30 seconds.</p>
            <div class="actions">
              <button type="button" onClick={onClose} autofocus>
                Hide and close
              </button>
            </div>
          </>
        ) : hidden ? (
          <>
            <p role="status" class="notice">
              The secret was hidden again after 30 seconds. Reveal it again if you still need it (another audited
              read).
            </p>
            <div class="actions">
              <button type="button" onClick={onClose} autofocus>
                Close
              </button>
            </div>
          </>
        ) : (
          <form
            novalidate
            onSubmit={async (e) => {
              e.preventDefault();
              const reason = ((e.currentTarget as HTMLFormElement).elements.namedItem("reason") as HTMLInputElement).value.trim();
              if (!reason) return setError("reason: say why you need the secret.");
              setBusy(true);
              setError(null);
              try {
                const r = await platformKeys.getDecryptedPlatformKey({ name: k.name, reason });
                setSecret({ value: r.apiKey, warning: r.warning, source: r.source });
              } catch (err) {
                setError(errorText(err));
              } finally {
                setBusy(false);
              }
            }}
          >
            <p class="warning">
              <strong>This reveal is audited.</strong> Your name, the time and your reason are written to the audit
              log before the secret is shown.
            </p>
            <label for={`${id}-reason`}>Reason</label>
            <input id={`${id}-reason`} name="reason" autocomplete="off" autofocus maxLength={500} />
            <ErrorBox error={error} />
            <div class="actions">
              <button type="button" onClick={onClose}>
                Cancel
              </button>
              <button type="submit" class="danger" disabled={busy}>
                {busy ? "Revealing…" : "Reveal secret"}
              </button>
            </div>
          </form>
        )}
      </div>
    </Modal>
  );
}
