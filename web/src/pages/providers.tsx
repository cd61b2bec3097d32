import { useEffect, useId, useState } from "preact/hooks";
import { userKeys, errorText } from "../api";
import type { Provider, ProviderKey, TestProviderKeyResponse } from "../gen/keyhouse/v1/user_keys_pb";
import { when } from "../format";
import { Confirm, Empty, ErrorBox, Loading, Modal, Notice } from "../ui/common";

type Test = { busy: true } | { busy: false; result?: TestProviderKeyResponse; error?: string };

export function Providers() {
  const [providers, setProviders] = useState<Provider[] | null>(null);
  const [keys, setKeys] = useState<Map<string, ProviderKey>>(new Map());
  const [error, setError] = useState<string | null>(null);
  const [editing, setEditing] = useState<string | null>(null);
  const [deleting, setDeleting] = useState<Provider | null>(null);
  const [tests, setTests] = useState<Record<string, Test>>({});
  const [notice, setNotice] = useState<string | null>(null);

  const load = async () => {
    setError(null);
    try {
      const [p, k] = await Promise.all([userKeys.listProviders({}), userKeys.listProviderKeys({})]);
      setProviders(p.providers);
      setKeys(new Map(k.keys.map((x) => [x.provider, x])));
    } catch (e) {
      setError(errorText(e));
      setProviders((p) => p ?? []);
    }
  };
  useEffect(() => {
    load();
  }, []);

  const test = async (p: Provider) => {
    setTests((t) => ({ ...t, [p.id]: { busy: true } }));
    try {
      const result = await userKeys.testProviderKey({ provider: p.id });
      setTests((t) => ({ ...t, [p.id]: { busy: false, result } }));
      load();
    } catch (e) {
      setTests((t) => ({ ...t, [p.id]: { busy: false, error: errorText(e) } }));
    }
  };

  const configured = providers?.filter((p) => keys.has(p.id)) ?? [];
  return (
    <>
      <div class="page-head">
        <h1>Provider keys</h1>
        <button type="button" class="primary" disabled={!providers?.length} onClick={() => setEditing("")}>
          Add provider key
        </button>
      </div>
      <p class="lead">
        Bring your own key for a model provider: your traffic through the gateway is then billed to your account
        with that provider. Keys are stored encrypted and never shown again.
      </p>
      {notice && <Notice>{notice}</Notice>}
      <ErrorBox error={error} />
      {providers === null ? (
        <Loading what="providers" />
      ) : configured.length === 0 ? (
        !error && (
          <Empty title="You have not added a provider key.">
            <p>Without one, the gateway uses the platform's own keys.</p>
          </Empty>
        )
      ) : (
        <ul class="card-list">
          {configured.map((p) => {
            const k = keys.get(p.id)!;
            const t = tests[p.id];
            return (
              <li class="card" key={p.id} data-provider={p.id}>
                <div class="card-head">
                  <h2>{p.name}</h2>
                  <span class={`badge badge-${k.testStatus}`}>{testLabel(k.testStatus)}</span>
                </div>
                <dl class="facts">
                  <dt>Key</dt>
                  <dd>
                    <code>{k.keyPreview}</code>
                  </dd>
                  {k.label && (
                    <>
                      <dt>Label</dt>
                      <dd>{k.label}</dd>
                    </>
                  )}
                  <dt>Added</dt>
                  <dd>{when(k.addedAt)}</dd>
                  <dt>Last tested</dt>
                  <dd>{when(k.lastTested, "Never")}</dd>
                </dl>
                <div class="test-result" role="status">
                  {t?.busy && "Testing…"}
                  {t && !t.busy && t.error && <span class="error-text">Test failed: {t.error}</span>}
                  {t && !t.busy && t.result && <TestResult r={t.result} />}
                </div>
                <div class="row-actions">
                  <button type="button" class="small" disabled={t?.busy} onClick={() => test(p)} aria-label={`Test ${p.name} key`}>
                    Test
                  </button>
                  <button type="button" class="small" onClick={() => setEditing(p.id)} aria-label={`Replace ${p.name} key`}>
                    Replace
                  </button>
                  <button type="button" class="small danger" onClick={() => setDeleting(p)} aria-label={`Delete ${p.name} key`}>
                    Delete
                  </button>
                </div>
              </li>
            );
          })}
        </ul>
      )}
      {providers && providers.length > 0 && (
        <section class="available">
          <h2>Supported providers</h2>
          <ul class="chips">
            {providers.map((p) => (
              <li key={p.id}>
                {p.name} {keys.has(p.id) ? "(added)" : ""}
              </li>
            ))}
          </ul>
        </section>
      )}
      {editing !== null && providers && (
        <PutKey
          providers={providers}
          initial={editing}
          onClose={() => setEditing(null)}
          onSaved={(msg, id) => {
            setEditing(null);
            setNotice(msg);
            setTests((t) => {
              const { [id]: _, ...rest } = t;
              return rest;
            });
            load();
          }}
        />
      )}
      {deleting && (
        <Confirm
          title={`Delete your ${deleting.name} key?`}
          confirmLabel="Delete key"
          danger
          onClose={() => setDeleting(null)}
          onConfirm={async () => {
            const res = await userKeys.deleteProviderKey({ provider: deleting.id });
            setDeleting(null);
            setNotice(res.message || `${deleting.name} key deleted.`);
            await load();
          }}
        >
          <p>The gateway stops using your own {deleting.name} key at once.</p>
        </Confirm>
      )}
    </>
  );
}

function testLabel(s: string): string {
  return { valid: "valid", invalid: "invalid", error: "error", unknown: "not tested" }[s] ?? s;
}

function TestResult({ r }: { r: TestProviderKeyResponse }) {
  return (
    <span class={r.status === "valid" ? "ok-text" : "error-text"}>
      Result: <strong>{r.status}</strong>
      {r.statusCode ? `, HTTP ${r.statusCode}` : ""}
      {r.latencyMs ? `, ${r.latencyMs.toString()} ms` : ""}
      {r.message ? ` — ${r.message}` : ""}
    </span>
  );
}

function PutKey({
  providers,
  initial,
  onClose,
  onSaved,
}: {
  providers: Provider[];
  initial: string;
  onClose: () => void;
  onSaved: (msg: string, provider: string) => void;
}) {
  const [provider, setProvider] = useState(initial || providers[0].id);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const id = useId();
  const p = providers.find((x) => x.id === provider)!;

  const submit = async (e: Event) => {
    e.preventDefault();
    const f = e.currentTarget as HTMLFormElement;
    const get = (n: string) => (f.elements.namedItem(n) as HTMLInputElement | null)?.value.trim() ?? "";
    const key = get("key");
    if (!key) return setError("key: enter the provider key.");
    const endpoint = p.requiresEndpoint ? get("endpoint") : "";
    if (p.requiresEndpoint && !endpoint) return setError("endpoint: this provider needs an endpoint URL.");
    setBusy(true);
    setError(null);
    try {
      const res = await userKeys.putProviderKey({ provider, key, label: get("label"), endpoint });
      onSaved(`${res.providerName || p.name}: ${res.message || "key saved"}.`, provider);
    } catch (err) {
      setError(errorText(err));
      setBusy(false);
    }
  };

  return (
    <Modal title={initial ? `Replace your ${p.name} key` : "Add a provider key"} onClose={onClose}>
      <form class="dialog-body" onSubmit={submit} novalidate>
        <label for={`${id}-provider`}>Provider</label>
        <select id={`${id}-provider`} value={provider} onChange={(e) => setProvider(e.currentTarget.value)} autofocus={!initial}>
          {providers.map((x) => (
            <option value={x.id} key={x.id}>
              {x.name}
              {x.configured ? " (replaces your key)" : ""}
            </option>
          ))}
        </select>
        <label for={`${id}-key`}>API key</label>
        <input
          id={`${id}-key`}
          name="key"
          type="password"
          autocomplete="off"
          spellcheck={false}
          aria-describedby={`${id}-key-hint`}
          autofocus={!!initial}
        />
        <p class="hint" id={`${id}-key-hint`}>
          {p.keyFormat ? (
            <>
              Format: <code>{p.keyFormat}</code>
            </>
          ) : (
            "The key your provider issued."
          )}
        </p>
        <label for={`${id}-label`}>Label (optional)</label>
        <input id={`${id}-label`} name="label" autocomplete="off" maxLength={255} />
        {p.requiresEndpoint && (
          <>
            <label for={`${id}-endpoint`}>Endpoint</label>
            <input
              id={`${id}-endpoint`}
              name="endpoint"
              type="url"
              inputMode="url"
              placeholder="https://"
              aria-describedby={`${id}-endpoint-hint`}
            />
            <p class="hint" id={`${id}-endpoint-hint`}>
              An http(s) URL without credentials, query or fragment.
            </p>
          </>
        )}
        <ErrorBox error={error} />
        <div class="actions">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            {busy ? "Saving…" : "Save key"}
          </button>
        </div>
      </form>
    </Modal>
  );
}
