// A real OpenID provider (oidc-provider, the certified Node.js implementation) for the end-to-end
// tests, on a loopback port. It prints one JSON line on stdout once it serves:
//   {"issuer", "kid", "private_pem", "public_pem", "stranger_pem"}
// `private_pem` is the provider's current signing key, so that a test can sign tokens the provider
// would never issue (expired, another issuer) with a key keyhouse trusts; `public_pem` is its
// public half (for the HS256-with-the-public-key attack); `stranger_pem` is a key no JWKS holds.
//
// Service clients (client_credentials, secret = "secret-" + client_id) get JWT access tokens for
// the resource they ask for (`resource=`, the token's `aud`), with the client's roles under
// `realm_access.roles` as Keycloak puts them:
//   service-user → ["keyhouse-user"], service-admin → ["keyhouse-admin"],
//   service-unmapped → ["billing-viewer"], service-user-es256 → ["keyhouse-user"], signed ES256
//   (every other client's tokens are RS256).
//
// The browser login's client is `keyhouse-web` (Authorization Code with PKCE, secret
// "secret-keyhouse-web"), redirecting to http://127.0.0.1:<any port>/auth/callback (a native
// client's loopback redirect, so the test's keyhouse may be on any port). Its users sign in on the
// provider's own development pages (any login name, any password, then consent); the ID token
// holds `email` and `realm_access.roles`: a login starting with "admin" → ["keyhouse-admin"],
// with "unmapped" → ["billing-viewer"], any other → ["keyhouse-user"].
//
// POST /admin/rotate replaces the signing key (the old one leaves the JWKS) and answers the same
// JSON as the first line. Usage: node provider.mjs [port]
import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const ROLES = {
  'service-user': ['keyhouse-user'],
  'service-user-es256': ['keyhouse-user'],
  'service-admin': ['keyhouse-admin'],
  'service-unmapped': ['billing-viewer'],
};

const WEB_CLIENT = {
  client_id: 'keyhouse-web',
  client_secret: 'secret-keyhouse-web',
  application_type: 'native',
  grant_types: ['authorization_code'],
  response_types: ['code'],
  redirect_uris: ['http://127.0.0.1/auth/callback'],
};

function accountRoles(login) {
  if (login.startsWith('admin')) return ['keyhouse-admin'];
  if (login.startsWith('unmapped')) return ['billing-viewer'];
  return ['keyhouse-user'];
}

function newKey() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = crypto.randomUUID();
  return {
    kid,
    jwk: { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' },
    privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }),
    publicPem: publicKey.export({ format: 'pem', type: 'spki' }),
  };
}

// A P-256 key beside the RSA one, for clients whose name ends in -es256; rotation leaves it.
const ecKey = (() => {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: 'ES256' };
})();

function makeProvider(issuer, key) {
  const provider = new Provider(issuer, {
    jwks: { keys: [key.jwk, ecKey] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    ttl: { ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 300 },
    clients: [...Object.keys(ROLES).map((id) => ({
      client_id: id,
      client_secret: `secret-${id}`,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
    })), WEB_CLIENT],
    findAccount: (_ctx, sub) => ({
      accountId: sub,
      claims: () => ({ sub, email: `${sub}@example.test`, realm_access: { roles: accountRoles(sub) } }),
    }),
    claims: { openid: ['sub', 'realm_access'], email: ['email'] },
    // The scopes' claims go into the ID token itself, as Keycloak puts roles there when asked.
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        getResourceServerInfo: (_ctx, resource, client) => ({
          scope: 'keys',
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: client.clientId.endsWith('-es256') ? 'ES256' : 'RS256' } },
        }),
      },
    },
    extraTokenClaims: (_ctx, token) => ({
      realm_access: { roles: ROLES[token.clientId] ?? [] },
    }),
  });
  return provider.callback();
}

const stranger = newKey();
const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

let key = newKey();
let handle = makeProvider(issuer, key);
const describe = () => JSON.stringify({
  issuer,
  kid: key.kid,
  private_pem: key.privatePem,
  public_pem: key.publicPem,
  stranger_pem: stranger.privatePem,
});

server.on('request', (req, res) => {
  if (req.method === 'POST' && req.url === '/admin/rotate') {
    key = newKey();
    handle = makeProvider(issuer, key);
    res.setHeader('content-type', 'application/json');
    res.end(describe());
    return;
  }
  handle(req, res);
});

// The test reads this line, then keeps the pipe open; the provider ends when the test kills it.
process.stdout.write(`${describe()}\n`);
