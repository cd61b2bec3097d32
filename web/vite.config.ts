import { defineConfig } from "vite";

// The dev server proxies keyhouse's RPC and auth paths to a running keyhouse, so the app talks to
// it same-origin as it does when keyhouse serves the built files.
const target = process.env.KEYHOUSE_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  // Preact's automatic JSX runtime through Vite's own transform; no framework plugin.
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  cacheDir: ".vite-cache",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    target: "es2022",
    assetsInlineLimit: 0,
  },
  server: {
    proxy: {
      "/keyhouse.v1.": { target, changeOrigin: false },
      "/auth/": { target, changeOrigin: false },
    },
  },
});
