import { useState } from "preact/hooks";
import { signIn, type Session } from "../api";
import { ErrorBox } from "../ui/common";

/** Where to go after signing in: a path on this site, else /keys. */
export function safeNext(next: string | null): string {
  if (!next || !next.startsWith("/") || next.startsWith("//") || next.startsWith("/sign-in")) return "/keys";
  return next;
}

export function SignIn({ oidc, next, onSignedIn }: { oidc: boolean; next: string; onSignedIn: (s: Session) => void }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const form = e.currentTarget as HTMLFormElement;
    const input = form.elements.namedItem("token") as HTMLInputElement;
    const token = input.value.trim();
    if (!token) {
      setError("Enter a session token.");
      input.focus();
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const s = await signIn(token);
      // The token is now in an HttpOnly cookie; drop it from the page.
      input.value = "";
      onSignedIn(s);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
      setBusy(false);
    }
  };

  return (
    <main class="page narrow signin" id="main">
      <h1>Sign in to keyhouse</h1>
      {oidc && (
        <section>
          <a class="button primary wide" href={`/auth/login?next=${encodeURIComponent(next)}`}>
            Sign in with your identity provider
          </a>
          <p class="or">or use a session token</p>
        </section>
      )}
      <section>
        <h2>{oidc ? "Session token" : "Sign in with a session token"}</h2>
        <p>An operator creates a session token on the server:</p>
        <pre>
          <code>keyhouse session create --user NAME --email EMAIL --role user --ttl 8h</code>
        </pre>
        <form onSubmit={submit} novalidate>
          <label for="token">Session token</label>
          <input id="token" name="token" type="password" autocomplete="off" spellcheck={false} required />
          <ErrorBox error={error} />
          <button type="submit" class="primary" disabled={busy}>
            {busy ? "Signing in…" : "Sign in"}
          </button>
        </form>
        <p class="hint">The token is exchanged for a session cookie and is not stored by this page.</p>
      </section>
    </main>
  );
}
