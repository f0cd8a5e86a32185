// Runtime settings served by the `web` edge function (from its Spin variables), so one build
// runs against any deployment.

export interface SiteConfig {
  /** The gateway's URL as this browser reaches it; gRPC-Web calls go there. */
  gatewayUrl: string;
}

export async function loadConfig(): Promise<SiteConfig> {
  const response = await fetch("/config.json", { cache: "no-cache" });
  if (!response.ok) {
    throw new Error(`The site's settings could not be loaded (HTTP ${response.status}).`);
  }
  const body: unknown = await response.json();
  const gatewayUrl = (body as { gatewayUrl?: unknown }).gatewayUrl;
  if (typeof gatewayUrl !== "string" || !/^https?:\/\//.test(gatewayUrl)) {
    throw new Error("The site's settings name no gateway URL.");
  }
  return { gatewayUrl: gatewayUrl.replace(/\/+$/, "") };
}
