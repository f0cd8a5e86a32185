// Choosing and loading image variants.
import { useEffect, useState } from "preact/hooks";
import { ImageState, type Image, type ImageVariant } from "./gen/storemesh/catalog/v1/catalog_pb.js";
import type { Session } from "./session.js";

/** The smallest variant at least `width` pixels wide, else the largest. */
export function variantFor(image: Image, width: number): ImageVariant | undefined {
  const sorted = [...image.variants].filter((v) => v.url).sort((a, b) => a.width - b.width);
  return sorted.find((variant) => variant.width >= width) ?? sorted[sorted.length - 1];
}

export function isReady(image: Image): boolean {
  return image.state === ImageState.READY;
}

/**
 * A draft product's images need the owner's token, which an `<img src>` cannot send: fetch the
 * bytes with it and show them from a blob URL (revoked when no longer shown).
 */
export function useAuthorizedImage(session: Session, url: string | undefined): string | undefined {
  const [objectUrl, setObjectUrl] = useState<string>();
  useEffect(() => {
    if (!url) {
      return;
    }
    const controller = new AbortController();
    let created: string | undefined;
    (async () => {
      const token = await session.token();
      const response = await fetch(url, {
        headers: token ? { authorization: `Bearer ${token}` } : {},
        signal: controller.signal,
      });
      if (!response.ok) {
        return;
      }
      created = URL.createObjectURL(await response.blob());
      setObjectUrl(created);
    })().catch(() => undefined);
    return () => {
      controller.abort();
      if (created) {
        URL.revokeObjectURL(created);
      }
      setObjectUrl(undefined);
    };
  }, [session, url]);
  return objectUrl;
}
