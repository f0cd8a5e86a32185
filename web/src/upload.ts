// Uploads go to the upload hook on this origin (`POST /v1/products/{id}/images`, the image as
// the body). XMLHttpRequest rather than fetch: only it reports upload progress.
import { HttpError } from "./errors.js";

/** Types the upload hook accepts. */
export const ACCEPTED_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif"];

export interface UploadedImage {
  image_id: string;
  product_id: string;
  state: string;
}

export interface Upload {
  done: Promise<UploadedImage>;
  abort(): void;
}

export function uploadImage(
  productId: string,
  file: File,
  token: string,
  onProgress: (fraction: number) => void,
): Upload {
  const request = new XMLHttpRequest();
  const done = new Promise<UploadedImage>((resolve, reject) => {
    request.open("POST", `/v1/products/${encodeURIComponent(productId)}/images`);
    request.setRequestHeader("authorization", `Bearer ${token}`);
    request.setRequestHeader("content-type", file.type);
    // A retry of this upload (after a dropped connection) stores nothing twice.
    request.setRequestHeader("idempotency-key", crypto.randomUUID());
    request.responseType = "text";
    request.upload.onprogress = (event) => {
      if (event.lengthComputable && event.total > 0) {
        onProgress(event.loaded / event.total);
      }
    };
    request.onload = () => {
      const body = parseJson(request.responseText);
      if (request.status === 201 || request.status === 200) {
        onProgress(1);
        resolve(body as UploadedImage);
        return;
      }
      const error = (body as { error?: { code?: string; message?: string } } | undefined)?.error;
      const retryAfter = Number(request.getResponseHeader("retry-after"));
      reject(
        new HttpError(
          request.status,
          error?.code ?? "http_error",
          error?.message ?? `HTTP ${request.status}`,
          Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter : undefined,
        ),
      );
    };
    request.onerror = () => reject(new TypeError("network error"));
    request.onabort = () => reject(new DOMException("aborted", "AbortError"));
    request.send(file);
  });
  return { done, abort: () => request.abort() };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
