import { useEffect, useId, useState } from "preact/hooks";
import { userKeys, errorText } from "../api";
import type { ApiKey, IssuedKey, KeyOptions } from "../gen/keyhouse/v1/user_keys_pb";
import { when, iso } from "../format";
import { Confirm, Empty, ErrorBox, Link, Loading, Modal, Notice, SecretBox, StatusBadge } from "../ui/common";

const PAGE = 20;

export function Keys() {
  const [keys, setKeys] = useState<ApiKey[] | null>(null);
  const [next, setNext] = useState("");
  const [status, setStatus] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [more, setMore] = useState(false);
  const [options, setOptions] = useState<KeyOptions | null>(null);
  const [optionsError, setOptionsError] = useState<string | null>(null);
  const [creating, setCreating] = useState(false);
  const [issued, setIssued] = useState<{ key: IssuedKey; title: string } | null>(null);
  const [revoking, setRevoking] = useState<ApiKey | null>(null);
  const [regenerating, setRegenerating] = useState<ApiKey | null>(null);
  const [notice, setNotice] = useState<string | null>(null);

  const load = async (append: boolean, token = "") => {
    setError(null);
    if (append) setMore(true);
    try {
      const res = await userKeys.listKeys({ pageSize: PAGE, pageToken: token, status });
      setKeys((old) => (append && old ? [...old, ...res.keys] : res.keys));
      setNext(res.nextPageToken);
    } catch (e) {
      setError(errorText(e));
      if (!append) setKeys([]);
    } finally {
      setMore(false);
    }
  };

  useEffect(() => {
    setKeys(null);
    load(false);
  }, [status]);

  useEffect(() => {
    userKeys.getKeyOptions({}).then(setOptions, (e) => setOptionsError(errorText(e)));
  }, []);

  return (
    <>
      <div class="page-head">
        <h1>My keys</h1>
        <button type="button" class="primary" onClick={() => setCreating(true)} disabled={!options} id="create-key">
          Create key
        </button>
      </div>
      <p class="lead">
        API keys let your programs call the gateway. Each key is shown once, when it is created.
        {options && options.maxActiveKeys > 0n && ` You can hold up to ${options.maxActiveKeys.toLocaleString()} active keys.`}
      </p>
      <ErrorBox error={optionsError} title="Key options could not be loaded:" />
      {notice && <Notice>{notice}</Notice>}
      <div class="filters">
        <label for="status-filter">Status</label>
        <select id="status-filter" value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
          <option value="">All</option>
          <option value="active">Active</option>
          <option value="expired">Expired</option>
          <option value="revoked">Revoked</option>
        </select>
      </div>
      <ErrorBox error={error} />
      {keys === null ? (
        <Loading what="your keys" />
      ) : keys.length === 0 && !error ? (
        <Empty title={status ? `No ${status} keys.` : "You have no keys yet."}>
          {!status && <p>Create one to call the gateway with it.</p>}
        </Empty>
      ) : (
        <table class="cards">
          <caption class="sr-only">Your API keys</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Key</th>
              <th scope="col">Status</th>
              <th scope="col">Scopes</th>
              <th scope="col">Expires</th>
              <th scope="col">Last used</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {keys.map((k) => (
              <tr key={k.keyId} data-key-id={k.keyId}>
                <th scope="row" data-label="Name">
                  {k.keyName}
                </th>
                <td data-label="Key">
                  <code>{k.keyPreview}</code>
                </td>
                <td data-label="Status">
                  <StatusBadge status={k.status} />
                </td>
                <td data-label="Scopes">
                  <ul class="chips">
                    {k.permissions.map((p) => (
                      <li key={p}>{p}</li>
                    ))}
                  </ul>
                </td>
                <td data-label="Expires">
                  <time dateTime={iso(k.expiresAt)}>{when(k.expiresAt, "Never")}</time>
                </td>
                <td data-label="Last used">
                  <time dateTime={iso(k.lastUsed)}>{when(k.lastUsed, "Never used")}</time>
                </td>
                <td>
                  <div class="row-actions">
                  <Link class="button small" href={`/keys/${k.keyId}`} aria-label={`Usage of ${k.keyName}`}>
                    Usage
                  </Link>
                  {k.status !== "revoked" && (
                    <>
                      <button type="button" class="small" onClick={() => setRegenerating(k)} aria-label={`Regenerate ${k.keyName}`}>
                        Regenerate
                      </button>
                      <button type="button" class="small danger" onClick={() => setRevoking(k)} aria-label={`Revoke ${k.keyName}`}>
                        Revoke
                      </button>
                    </>
                  )}
                  </div>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {next && (
        <button type="button" class="more" disabled={more} onClick={() => load(true, next)}>
          {more ? "Loading…" : "Load more"}
        </button>
      )}

      {creating && options && (
        <CreateKey
          options={options}
          onClose={() => {
            setCreating(false);
            load(false);
          }}
        />
      )}
      {issued && (
        <Modal
          title={issued.title}
          onClose={() => {
            setIssued(null);
            load(false);
          }}
        >
          <IssuedView key={issued.key.keyId} issued={issued.key} />
          <div class="actions">
            <button type="button" onClick={() => setIssued(null)}>
              Done
            </button>
          </div>
        </Modal>
      )}
      {revoking && (
        <Confirm
          title="Revoke this key?"
          confirmLabel="Revoke key"
          danger
          onClose={() => setRevoking(null)}
          onConfirm={async () => {
            const res = await userKeys.revokeKey({ keyId: revoking.keyId });
            setRevoking(null);
            setNotice(`${revoking.keyName}: ${res.message || "revoked"}.`);
            await load(false);
          }}
        >
          <p>
            <strong>{revoking.keyName}</strong> (<code>{revoking.keyPreview}</code>) stops working at once, for every
            program that uses it. This cannot be undone.
          </p>
        </Confirm>
      )}
      {regenerating && (
        <Confirm
          title="Regenerate this key?"
          confirmLabel="Regenerate key"
          danger
          onClose={() => setRegenerating(null)}
          onConfirm={async () => {
            const key = await userKeys.regenerateKey({ keyId: regenerating.keyId });
            setRegenerating(null);
            setIssued({ key, title: `New secret for ${key.keyName}` });
          }}
        >
          <p>
            <strong>{regenerating.keyName}</strong> gets a new secret; the current one (
            <code>{regenerating.keyPreview}</code>) stops working at once. The key keeps its name and scopes.
          </p>
        </Confirm>
      )}
    </>
  );
}

function IssuedView({ issued }: { issued: IssuedKey }) {
  return (
    <div class="dialog-body" data-issued-key-id={issued.keyId}>
      <SecretBox
        secret={issued.apiKey}
        label={`API key for ${issued.keyName}`}
        warning={issued.warning || "Save this API key now. You won't be able to see it again."}
        focusCopy
      />
      <dl class="facts">
        <dt>Scopes</dt>
        <dd>{issued.permissions.join(", ")}</dd>
        <dt>Expires</dt>
        <dd>{when(issued.expiresAt, "Never")}</dd>
      </dl>
    </div>
  );
}

function CreateKey({ options, onClose }: { options: KeyOptions; onClose: () => void }) {
  const [issued, setIssued] = useState<IssuedKey | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [never, setNever] = useState(false);
  const id = useId();
  const maxDays = Number(options.maxExpiresInDays) || 3650;
  const maxRate = Number(options.maxRateLimitPerMinute) || 1000000;

  const submit = async (e: Event) => {
    e.preventDefault();
    const f = e.currentTarget as HTMLFormElement;
    const get = (n: string) => (f.elements.namedItem(n) as HTMLInputElement | null)?.value.trim() ?? "";
    const name = get("name");
    if (!name) return setError("name: enter a name for the key.");
    const permissions = options.scopes.filter(
      (s) => (f.elements.namedItem(`scope:${s}`) as HTMLInputElement | null)?.checked,
    );
    if (!permissions.length) return setError("permissions: choose at least one scope.");
    let expiresInDays: number | undefined;
    if (never) expiresInDays = 0;
    else {
      expiresInDays = Number(get("days"));
      if (!Number.isInteger(expiresInDays) || expiresInDays < 1 || expiresInDays > maxDays)
        return setError(`expires_in_days: enter a whole number of days from 1 to ${maxDays}.`);
    }
    let rateLimitPerMinute: number | undefined;
    const rate = get("rate");
    if (rate) {
      rateLimitPerMinute = Number(rate);
      if (!Number.isInteger(rateLimitPerMinute) || rateLimitPerMinute < 1 || rateLimitPerMinute > maxRate)
        return setError(`rate_limit_per_minute: enter a whole number from 1 to ${maxRate}, or leave it empty.`);
    }
    const allowedIps = get("ips")
      .split(/[\s,]+/)
      .filter(Boolean);
    setBusy(true);
    setError(null);
    try {
      setIssued(
        await userKeys.createKey({ name, permissions, expiresInDays, rateLimitPerMinute, allowedIps }),
      );
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  if (issued)
    return (
      <Modal title="Your new API key" onClose={onClose}>
        <IssuedView issued={issued} />
        <div class="actions">
          <button type="button" onClick={onClose}>
            Done
          </button>
        </div>
      </Modal>
    );

  return (
    <Modal title="Create an API key" onClose={onClose}>
      <form onSubmit={submit} novalidate class="dialog-body">
        <label for={`${id}-name`}>Name</label>
        <input id={`${id}-name`} name="name" required maxLength={255} autocomplete="off" autofocus />
        <fieldset>
          <legend>Scopes</legend>
          {options.scopes.map((s) => (
            <label class="check" key={s}>
              <input type="checkbox" name={`scope:${s}`} defaultChecked={options.defaultScopes.includes(s)} />
              {s}
            </label>
          ))}
        </fieldset>
        <label for={`${id}-days`}>Expires in (days)</label>
        <input
          id={`${id}-days`}
          name="days"
          type="number"
          inputMode="numeric"
          min={1}
          max={maxDays}
          defaultValue={String(Number(options.defaultExpiresInDays) || 90)}
          disabled={never}
          aria-describedby={`${id}-days-hint`}
        />
        <p class="hint" id={`${id}-days-hint`}>
          From 1 to {maxDays} days.
        </p>
        {options.allowsNonExpiring && (
          <label class="check">
            <input type="checkbox" checked={never} onChange={(e) => setNever(e.currentTarget.checked)} />
            Never expires
          </label>
        )}
        <label for={`${id}-rate`}>Rate limit (requests per minute)</label>
        <input
          id={`${id}-rate`}
          name="rate"
          type="number"
          inputMode="numeric"
          min={1}
          max={maxRate}
          placeholder="Unlimited"
          aria-describedby={`${id}-rate-hint`}
        />
        <p class="hint" id={`${id}-rate-hint`}>
          Empty for unlimited; at most {maxRate.toLocaleString()}.
        </p>
        <label for={`${id}-ips`}>Allowed networks</label>
        <textarea id={`${id}-ips`} name="ips" rows={2} aria-describedby={`${id}-ips-hint`} spellcheck={false} />
        <p class="hint" id={`${id}-ips-hint`}>
          Addresses or CIDR ranges, separated by spaces, commas or lines. Empty for anywhere.
        </p>
        <ErrorBox error={error} />
        <div class="actions">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            {busy ? "Creating…" : "Create key"}
          </button>
        </div>
      </form>
    </Modal>
  );
}
