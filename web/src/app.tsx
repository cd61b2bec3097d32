import { useEffect, useState } from "preact/hooks";
import { getSession, setUnauthenticatedHandler, signOut, type Session, type SessionUser } from "./api";
import { navigate, useLocation } from "./router";
import { ErrorBox, Link, Loading } from "./ui/common";
import { SignIn, safeNext } from "./pages/signin";
import { Keys } from "./pages/keys";
import { KeyUsage } from "./pages/usage";
import { Providers } from "./pages/providers";
import { PlatformKeys } from "./pages/platform";
import { Audit } from "./pages/audit";
import { PlatformKeyHealth } from "./pages/health";

export function App() {
  const [session, setSession] = useState<Session | null>(null);
  const [bootError, setBootError] = useState<string | null>(null);
  const { path, search } = useLocation();

  const load = () => {
    setBootError(null);
    getSession().then(setSession, (e) => setBootError(e instanceof Error ? e.message : String(e)));
  };
  useEffect(() => {
    load();
    setUnauthenticatedHandler(() => setSession((s) => (s ? { ...s, user: null } : s)));
  }, []);

  const user = session?.user ?? null;
  const onSignIn = path === "/sign-in";
  useEffect(() => {
    if (!session) return;
    if (!user && !onSignIn) navigate(`/sign-in?next=${encodeURIComponent(path + location.search)}`, true);
    else if (user && onSignIn) navigate(safeNext(search.get("next")), true);
    else if (user && path === "/") navigate("/keys", true);
  }, [session, user, path]);

  useEffect(() => {
    if (session && (user || onSignIn)) {
      // The first view the app rendered, for load-time measurements.
      if (!performance.getEntriesByName("keyhouse:first-view").length) performance.mark("keyhouse:first-view");
      document.documentElement.dataset.ready = "true";
    }
  });

  if (bootError)
    return (
      <main class="page narrow" id="main">
        <h1>keyhouse</h1>
        <ErrorBox error={bootError} />
        <button type="button" onClick={load}>
          Try again
        </button>
      </main>
    );
  if (!session) return <Loading what="keyhouse" />;
  if (!user || onSignIn)
    return <SignIn oidc={session.oidc_login} next={safeNext(search.get("next"))} onSignedIn={setSession} />;

  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <Header user={user} path={path} onSignedOut={() => setSession({ ...session, user: null })} />
      <main id="main" class="page" tabIndex={-1}>
        <Route path={path} user={user} />
      </main>
    </>
  );
}

function Route({ path, user }: { path: string; user: SessionUser }) {
  const admin = user.role === "admin";
  useEffect(() => {
    const h = document.querySelector("main h1");
    document.title = `${h?.textContent ?? "keyhouse"} · keyhouse`;
  });
  if (path === "/keys" || path === "/") return <Keys />;
  const m = /^\/keys\/([^/]+)$/.exec(path);
  if (m) return <KeyUsage keyId={decodeURIComponent(m[1])} />;
  if (path === "/providers") return <Providers />;
  if (path.startsWith("/admin/")) {
    if (!admin) return <AdminOnly />;
    if (path === "/admin/platform-keys") return <PlatformKeys />;
    if (path === "/admin/audit") return <Audit />;
    const h = /^\/admin\/platform-keys\/([^/]+)\/health$/.exec(path);
    if (h) return <PlatformKeyHealth name={decodeURIComponent(h[1])} />;
  }
  return (
    <>
      <h1>Page not found</h1>
      <p>
        There is nothing at <code>{path}</code>. Go to <Link href="/keys">your keys</Link>.
      </p>
    </>
  );
}

function AdminOnly() {
  return (
    <section class="admin-only">
      <h1>Admins only</h1>
      <p>
        This page is for keyhouse administrators. You are signed in with the role <strong>user</strong>, so
        keyhouse would refuse it (permission denied). Ask an administrator if you need access.
      </p>
      <p>
        <Link href="/keys">Back to my keys</Link>
      </p>
    </section>
  );
}

function Header({ user, path, onSignedOut }: { user: SessionUser; path: string; onSignedOut: () => void }) {
  const [error, setError] = useState<string | null>(null);
  const links: [string, string][] = [
    ["/keys", "My keys"],
    ["/providers", "Provider keys"],
  ];
  if (user.role === "admin")
    links.push(["/admin/platform-keys", "Platform keys"], ["/admin/audit", "Audit log"]);
  return (
    <header class="top">
      <div class="brand">
        <Link href="/keys">keyhouse</Link>
      </div>
      <nav aria-label="Main">
        <ul>
          {links.map(([href, label]) => (
            <li key={href}>
              <Link
                href={href}
                aria-current={path === href || path.startsWith(href + "/") ? "page" : undefined}
              >
                {label}
              </Link>
            </li>
          ))}
        </ul>
      </nav>
      <div class="who">
        <span class="email">{user.email || user.user_id}</span>
        <span class={`role role-${user.role}`}>{user.role}</span>
        <button
          type="button"
          onClick={async () => {
            setError(null);
            try {
              await signOut();
              onSignedOut();
            } catch (e) {
              setError(e instanceof Error ? e.message : String(e));
            }
          }}
        >
          Sign out
        </button>
      </div>
      <ErrorBox error={error} />
    </header>
  );
}
