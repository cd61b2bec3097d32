// The console's only ways to talk to keyhouse: the grpc-web clients of its two services, and the
// small JSON API of /auth for the browser session.
import { createClient, ConnectError, Code, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { UserKeyService } from "./gen/keyhouse/v1/user_keys_pb";
import { PlatformKeyService } from "./gen/keyhouse/v1/platform_keys_pb";

/** The value of a cookie readable by script (the CSRF token), or "" when it is not set. */
export function cookie(name: string): string {
  for (const part of document.cookie.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) return decodeURIComponent(part.slice(eq + 1).trim());
  }
  return "";
}

// Double-submit CSRF: every call carries the csrf_token cookie's value in a header.
const csrf: Interceptor = (next) => async (req) => {
  const token = cookie("csrf_token");
  if (token) req.header.set("x-csrf-token", token);
  return next(req);
};

// Any call that finds the session gone sends the user back to sign in.
let onUnauthenticated: () => void = () => {};
export function setUnauthenticatedHandler(f: () => void) {
  onUnauthenticated = f;
}
const signedOut: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (e) {
    if (e instanceof ConnectError && e.code === Code.Unauthenticated) onUnauthenticated();
    throw e;
  }
};

const transport = createGrpcWebTransport({
  baseUrl: location.origin,
  interceptors: [csrf, signedOut],
});

export const userKeys = createClient(UserKeyService, transport);
export const platformKeys = createClient(PlatformKeyService, transport);

/** An error in words: the server's own message, never "[object Object]". */
export function errorText(e: unknown): string {
  if (e instanceof ConnectError) {
    const msg = e.rawMessage || Code[e.code];
    if (e.code === Code.PermissionDenied) return `Not allowed: ${msg}`;
    if (e.code === Code.Unavailable || e.code === Code.Unknown && /fetch/i.test(msg))
      return `keyhouse could not be reached: ${msg}`;
    return msg;
  }
  if (e instanceof Error) return e.message;
  return String(e);
}

export function isPermissionDenied(e: unknown): boolean {
  return e instanceof ConnectError && e.code === Code.PermissionDenied;
}

export type Role = "user" | "admin";
export interface SessionUser {
  user_id: string;
  email: string;
  role: Role;
  source: string;
}
export interface Session {
  user: SessionUser | null;
  oidc_login: boolean;
}

/** The text of a failed /auth response: its `detail` (a string, or FastAPI-style list). */
async function detail(res: Response): Promise<string> {
  try {
    const body = await res.json();
    const d = body?.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d))
      return d
        .map((x) => {
          const field = Array.isArray(x?.loc) ? x.loc[x.loc.length - 1] : "";
          return field ? `${field}: ${x?.msg ?? ""}` : String(x?.msg ?? "");
        })
        .join("; ");
  } catch {
    // not JSON
  }
  return `${res.status} ${res.statusText}`.trim();
}

export async function getSession(): Promise<Session> {
  const res = await fetch("/auth/session", { credentials: "same-origin" });
  if (!res.ok) throw new Error(`Could not read the session: ${await detail(res)}`);
  return (await res.json()) as Session;
}

export async function signIn(token: string): Promise<Session> {
  const res = await fetch("/auth/session", {
    method: "POST",
    credentials: "same-origin",
    // A browser that still holds a session cookie must prove it is this page (CSRF).
    headers: { "Content-Type": "application/json", "X-CSRF-Token": cookie("csrf_token") },
    body: JSON.stringify({ token }),
  });
  if (!res.ok) throw new Error(`Sign-in failed: ${await detail(res)}`);
  return (await res.json()) as Session;
}

export async function signOut(): Promise<void> {
  const res = await fetch("/auth/logout", {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-CSRF-Token": cookie("csrf_token") },
  });
  if (!res.ok && res.status !== 401) throw new Error(`Sign-out failed: ${await detail(res)}`);
}
