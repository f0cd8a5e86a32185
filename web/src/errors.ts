// Errors from the services, in words for people: a gRPC status from a gRPC-Web call, or the
// JSON error of an edge function (`{"error":{"status","code","message"}}`).
import { Code, ConnectError } from "@connectrpc/connect";

/** An edge function's JSON error (uploads, image bytes). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
    this.name = "HttpError";
  }
}

/** A sentence for `error`, fit to show next to the control that failed. */
export function describeError(error: unknown): string {
  if (error instanceof HttpError) {
    return describeHttp(error);
  }
  if (error instanceof ConnectError) {
    return describeStatus(error);
  }
  if (error instanceof Error && error.name === "AbortError") {
    return "Cancelled.";
  }
  if (error instanceof TypeError) {
    return "The service could not be reached. Check your connection and try again.";
  }
  return error instanceof Error ? error.message : String(error);
}

function describeStatus(error: ConnectError): string {
  const detail = sentence(error.rawMessage);
  switch (error.code) {
    case Code.InvalidArgument:
      return detail ? `Please check your input: ${detail}` : "Please check your input.";
    case Code.Unauthenticated:
      return detail.toLowerCase().includes("password")
        ? "That email and password do not match an account."
        : "Your session has ended. Please sign in again.";
    case Code.PermissionDenied:
      return "Your account is not allowed to do that (only the product's seller or an admin can change it).";
    case Code.NotFound:
      return detail ? `Not found: ${detail}` : "It does not exist (any more).";
    case Code.AlreadyExists:
      return detail ? `Already exists: ${detail}` : "It already exists.";
    case Code.Aborted:
      return "Someone changed this in the meantime. The latest version is shown now; please try again.";
    case Code.FailedPrecondition:
      return detail ? `Not possible right now: ${detail}` : "Not possible right now.";
    case Code.ResourceExhausted: {
      const wait = error.metadata.get("retry-after");
      return wait
        ? `Too many requests. Please wait ${wait} seconds and try again.`
        : "Too many requests. Please wait a moment and try again.";
    }
    case Code.Unavailable:
      return "The service is not reachable right now. Please try again in a moment.";
    case Code.DeadlineExceeded:
      return "The service took too long to answer. Please try again.";
    case Code.Canceled:
      return "Cancelled.";
    default:
      return "Something went wrong on our side. Please try again later.";
  }
}

function describeHttp(error: HttpError): string {
  switch (error.status) {
    case 401:
      return "Your session has ended. Please sign in again.";
    case 403:
      return "Your account is not allowed to add images to this product.";
    case 413:
      return "This file is too large.";
    case 415:
      return "This file is not a JPEG, PNG, WebP or GIF image.";
    case 422:
      return `This image cannot be used: ${sentence(error.message)}`;
    case 429:
      return error.retryAfterSeconds !== undefined
        ? `Too many uploads. Please wait ${error.retryAfterSeconds} seconds and try again.`
        : "Too many uploads. Please wait a moment and try again.";
    case 502:
    case 503:
    case 504:
      return "The service is not reachable right now. Please try again in a moment.";
    default:
      return error.message ? sentence(error.message) : `The upload failed (HTTP ${error.status}).`;
  }
}

/** `message` with a capital letter and a full stop. */
function sentence(message: string): string {
  const text = message.trim();
  if (!text) {
    return "";
  }
  const capital = text[0].toUpperCase() + text.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}
