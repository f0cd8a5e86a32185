import { defineConfig, type Plugin } from "vite";

/**
 * `npm run dev`: Vite serves the pages; uploads and images go to a running `storemesh up`
 * (its edge, STOREMESH_EDGE_URL) and gRPC-Web to its gateway (STOREMESH_GATEWAY_URL, which
 * must list this dev origin in `gateway.cors.allowed_origins`). In production the `web` edge
 * function serves dist/ and generates /config.json from its Spin variables.
 */
const edge = process.env.STOREMESH_EDGE_URL ?? "http://127.0.0.1:3000";
const gateway = process.env.STOREMESH_GATEWAY_URL ?? "http://127.0.0.1:50050";

function devConfig(): Plugin {
  return {
    name: "storemesh-dev-config",
    configureServer(server) {
      server.middlewares.use("/config.json", (_request, response) => {
        response.setHeader("content-type", "application/json");
        response.setHeader("cache-control", "no-cache");
        response.end(JSON.stringify({ gatewayUrl: gateway }));
      });
    },
  };
}

// A static site: `npm run build` writes dist/, which the `web` edge function serves
// (content-hashed files under assets/ are cached for a year).
export default defineConfig({
  plugins: [devConfig()],
  build: {
    target: "es2022",
    sourcemap: true,
    assetsInlineLimit: 0,
  },
  server: {
    host: "127.0.0.1",
    proxy: {
      "/v1": edge,
      "/img": edge,
    },
  },
});
