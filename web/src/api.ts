// The mesh from the browser: gRPC-Web to the gateway with clients generated from proto/
// (Connect-ES), the session's token on every call, and the edge functions on this origin.
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { CatalogService } from "./gen/storemesh/catalog/v1/catalog_pb.js";
import { Session } from "./session.js";

/** Deadline of unary calls; `WatchProduct` runs without one (it stays open). */
const CALL_TIMEOUT_MS = 15_000;

export interface Api {
  session: Session;
  /** The catalog with the session's token (when signed in). */
  catalog: Client<typeof CatalogService>;
  /** `catalog` without a deadline, for `WatchProduct` (a stream that stays open). */
  watcher: Client<typeof CatalogService>;
  /** The catalog as an anonymous shopper: the storefront never shows a seller's drafts. */
  storefront: Client<typeof CatalogService>;
}

export function createApi(gatewayUrl: string): Api {
  const anonymous = transport(gatewayUrl, [], CALL_TIMEOUT_MS);
  const session = new Session(anonymous);
  const token = withToken(session);
  return {
    session,
    catalog: createClient(CatalogService, transport(gatewayUrl, [token], CALL_TIMEOUT_MS)),
    watcher: createClient(CatalogService, transport(gatewayUrl, [token], undefined)),
    storefront: createClient(CatalogService, anonymous),
  };
}

function transport(
  baseUrl: string,
  interceptors: Interceptor[],
  defaultTimeoutMs: number | undefined,
): Transport {
  return createGrpcWebTransport({ baseUrl, interceptors, defaultTimeoutMs });
}

/**
 * Adds `authorization: Bearer …`; a unary call the services refuse as unauthenticated is
 * retried once with a renewed token (the token may have been revoked or its key rotated).
 */
function withToken(session: Session): Interceptor {
  return (next) => async (request) => {
    const token = await session.token();
    if (token) {
      request.header.set("authorization", `Bearer ${token}`);
    }
    try {
      return await next(request);
    } catch (error) {
      if (
        token &&
        !request.stream &&
        error instanceof ConnectError &&
        error.code === Code.Unauthenticated
      ) {
        const renewed = await session.renew();
        if (renewed && renewed !== token) {
          request.header.set("authorization", `Bearer ${renewed}`);
          return next(request);
        }
      }
      throw error;
    }
  };
}
