import { render } from "preact";
import { createApi } from "./api.js";
import { App } from "./App.js";
import { loadConfig } from "./config.js";
import { ApiContext } from "./context.js";
import "./styles.css";

async function start(root: HTMLElement): Promise<void> {
  const config = await loadConfig();
  const api = createApi(config.gatewayUrl);
  // A session of this tab survives a reload; offline, the pages still show (signed out).
  await api.session.restore().catch(() => false);
  // Replace the static "Loading…" placeholder rather than render next to it.
  root.replaceChildren();
  render(
    <ApiContext.Provider value={api}>
      <App />
    </ApiContext.Provider>,
    root,
  );
}

const root = document.getElementById("app");
if (root) {
  start(root).catch((error: unknown) => {
    root.textContent = error instanceof Error ? error.message : String(error);
    root.setAttribute("role", "alert");
  });
}
