// A product's page in the console: its fields, publishing, and its images, kept live from
// `WatchProduct` (a gRPC-Web server stream), so uploads turn into thumbnails by themselves.
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { useEffect, useRef, useState } from "preact/hooks";
import {
  ImageState,
  ProductVisibility,
  type Image,
  type Product,
} from "../gen/storemesh/catalog/v1/catalog_pb.js";
import { useApi } from "../context.js";
import { describeError } from "../errors.js";
import { useAuthorizedImage, variantFor } from "../images.js";
import { CURRENCIES, amountText, parseAmount } from "../money.js";
import { onLinkClick } from "../router.js";
import { ACCEPTED_TYPES, uploadImage } from "../upload.js";
import { VisibilityBadge } from "./ProductList.js";

/** Waits between resubscriptions after a dropped stream: 1 s doubling to 15 s. */
const RECONNECT_MS = [1_000, 2_000, 4_000, 8_000, 15_000];

type Connection = "connecting" | "live" | "reconnecting";

interface LiveProduct {
  product?: Product;
  images: Map<string, Image>;
  connection: Connection;
  gone?: string;
}

/** The product and its images as `WatchProduct` reports them, resubscribing when it drops. */
function useLiveProduct(id: string): LiveProduct {
  const { watcher } = useApi();
  const [state, setState] = useState<LiveProduct>({ images: new Map(), connection: "connecting" });

  useEffect(() => {
    const controller = new AbortController();
    (async () => {
      for (let attempt = 0; !controller.signal.aborted; attempt++) {
        try {
          const stream = watcher.watchProduct(
            { productId: id, sendInitial: true },
            { signal: controller.signal },
          );
          let fresh = true;
          for await (const message of stream) {
            attempt = 0;
            setState((previous) => {
              // Each subscription starts with a snapshot: drop what an earlier one showed.
              const images = fresh ? new Map<string, Image>() : new Map(previous.images);
              const next: LiveProduct = { ...previous, images, connection: "live" };
              fresh = false;
              const change = message.change;
              switch (change.case) {
                case "productUpdated":
                  next.product = change.value;
                  break;
                case "imageUpdated":
                  images.set(change.value.id, change.value);
                  break;
                case "imageDeletedId":
                  images.delete(change.value);
                  break;
                case "productDeletedId":
                  next.gone = "This product was deleted.";
                  break;
              }
              return next;
            });
          }
          // The server ends the stream only after the product was deleted.
          return;
        } catch (error) {
          if (controller.signal.aborted) {
            return;
          }
          if (error instanceof ConnectError && error.code === Code.NotFound) {
            setState((previous) => ({ ...previous, gone: "This product does not exist." }));
            return;
          }
          if (
            error instanceof ConnectError &&
            (error.code === Code.PermissionDenied || error.code === Code.Unauthenticated)
          ) {
            setState((previous) => ({ ...previous, gone: describeError(error) }));
            return;
          }
          setState((previous) => ({ ...previous, connection: "reconnecting" }));
          const wait = RECONNECT_MS[Math.min(attempt, RECONNECT_MS.length - 1)];
          await new Promise((resolve) => setTimeout(resolve, wait));
        }
      }
    })();
    return () => controller.abort();
  }, [watcher, id]);

  return state;
}

export function ProductEditor({ id }: { id: string }) {
  const live = useLiveProduct(id);
  const { product } = live;

  if (live.gone) {
    return (
      <section>
        <p class="error" role="alert">
          {live.gone}
        </p>
        <a href="/console" onClick={onLinkClick}>
          Back to your products
        </a>
      </section>
    );
  }
  if (!product) {
    return <p aria-live="polite">Loading…</p>;
  }
  const images = [...live.images.values()].sort(byCreateTime);
  return (
    <section>
      <p>
        <a href="/console" onClick={onLinkClick}>
          ← Your products
        </a>
      </p>
      <h1>
        {product.title} <VisibilityBadge visibility={product.visibility} />
      </h1>
      {live.connection === "reconnecting" && (
        <p class="notice" role="status">
          Live updates interrupted; reconnecting…
        </p>
      )}
      <ProductFields product={product} />
      <Publishing product={product} images={images} />
      <h2>Images</h2>
      <Uploader productId={product.id} />
      <ImageGrid product={product} images={images} />
    </section>
  );
}

function byCreateTime(a: Image, b: Image): number {
  const time = (image: Image) => (image.createTime ? timestampDate(image.createTime).getTime() : 0);
  return time(a) - time(b) || a.id.localeCompare(b.id);
}

function ProductFields({ product }: { product: Product }) {
  const { catalog } = useApi();
  const [title, setTitle] = useState(product.title);
  const [amount, setAmount] = useState(amountText(product.price));
  const [currency, setCurrency] = useState(product.price?.currencyCode ?? "EUR");
  const [tags, setTags] = useState(product.tags.join(", "));
  const [status, setStatus] = useState<{ error?: string; saved?: boolean }>({});
  const [busy, setBusy] = useState(false);
  const shown = useRef(product.etag);

  // Another tab's (or the server's) change replaces the form's values while they are unedited.
  useEffect(() => {
    if (product.etag !== shown.current) {
      shown.current = product.etag;
      setTitle(product.title);
      setAmount(amountText(product.price));
      setCurrency(product.price?.currencyCode ?? "EUR");
      setTags(product.tags.join(", "));
    }
  }, [product]);

  const save = async (event: Event) => {
    event.preventDefault();
    const amountMinor = parseAmount(amount, currency);
    if (amountMinor === undefined) {
      setStatus({ error: `Please enter the price as a number such as 19.99 (${currency}).` });
      return;
    }
    const tagList = tags
      .split(",")
      .map((tag) => tag.trim().toLowerCase())
      .filter(Boolean);
    setBusy(true);
    setStatus({});
    try {
      await catalog.updateProduct({
        product: {
          id: product.id,
          title,
          price: { amountMinor, currencyCode: currency },
          tags: tagList,
        },
        updateMask: { paths: ["title", "price", "tags"] },
        // Refused (ABORTED) when the product changed since this form showed it.
        etag: product.etag,
      });
      setStatus({ saved: true });
    } catch (failure) {
      setStatus({ error: describeError(failure) });
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="fields" onSubmit={save} aria-label="Product details">
      <label>
        Title
        <input required maxLength={200} value={title} onInput={(e) => setTitle(e.currentTarget.value)} />
      </label>
      <label>
        Price
        <input
          inputMode="decimal"
          required
          value={amount}
          onInput={(e) => setAmount(e.currentTarget.value)}
        />
      </label>
      <label>
        Currency
        <select value={currency} onChange={(e) => setCurrency(e.currentTarget.value)}>
          {[...new Set([...CURRENCIES, currency])].map((code) => (
            <option key={code} value={code}>
              {code}
            </option>
          ))}
        </select>
      </label>
      <label>
        Tags <span class="hint">(comma-separated, e.g. lamps, oak)</span>
        <input value={tags} onInput={(e) => setTags(e.currentTarget.value)} />
      </label>
      <button type="submit" disabled={busy}>
        {busy ? "Saving…" : "Save"}
      </button>
      {status.saved && (
        <span class="ok" role="status">
          Saved.
        </span>
      )}
      {status.error && (
        <p class="error" role="alert">
          {status.error}
        </p>
      )}
    </form>
  );
}

function Publishing({ product, images }: { product: Product; images: Image[] }) {
  const { catalog } = useApi();
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const published = product.visibility === ProductVisibility.PUBLISHED;
  const readyCount = images.filter((image) => image.state === ImageState.READY).length;

  const toggle = async () => {
    setBusy(true);
    setError(undefined);
    try {
      await catalog.updateProduct({
        product: {
          id: product.id,
          visibility: published ? ProductVisibility.DRAFT : ProductVisibility.PUBLISHED,
        },
        updateMask: { paths: ["visibility"] },
        etag: product.etag,
      });
    } catch (failure) {
      setError(describeError(failure));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="publishing">
      <p>
        {published ? (
          <>
            Shoppers can see this product:{" "}
            <a href={`/p/${product.id}`} onClick={onLinkClick}>
              view it in the shop
            </a>
            .
          </>
        ) : (
          "Only you can see this draft."
        )}{" "}
        {!published && readyCount === 0 && "It has no ready image yet."}
      </p>
      <button type="button" onClick={toggle} disabled={busy}>
        {published ? "Unpublish" : "Publish"}
      </button>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}

interface UploadItem {
  key: string;
  name: string;
  progress: number;
  state: "uploading" | "done" | "failed";
  message?: string;
}

function Uploader({ productId }: { productId: string }) {
  const { session } = useApi();
  const [items, setItems] = useState<UploadItem[]>([]);
  const [dragging, setDragging] = useState(false);
  const input = useRef<HTMLInputElement>(null);

  const update = (key: string, change: Partial<UploadItem>) =>
    setItems((list) => list.map((item) => (item.key === key ? { ...item, ...change } : item)));

  const start = (files: Iterable<File>) => {
    for (const file of files) {
      const key = crypto.randomUUID();
      const item: UploadItem = { key, name: file.name, progress: 0, state: "uploading" };
      setItems((list) => [...list, item]);
      if (!ACCEPTED_TYPES.includes(file.type)) {
        update(key, { state: "failed", message: "Not a JPEG, PNG, WebP or GIF image." });
        continue;
      }
      (async () => {
        const token = await session.token();
        if (!token) {
          throw new Error("Your session has ended. Please sign in again.");
        }
        const upload = uploadImage(productId, file, token, (progress) => update(key, { progress }));
        await upload.done;
        update(key, { state: "done", progress: 1 });
      })().catch((failure: unknown) => {
        update(key, { state: "failed", message: describeError(failure) });
      });
    }
  };

  return (
    <div>
      <div
        class={`dropzone${dragging ? " dragging" : ""}`}
        onDragOver={(event) => {
          event.preventDefault();
          setDragging(true);
        }}
        onDragLeave={() => setDragging(false)}
        onDrop={(event) => {
          event.preventDefault();
          setDragging(false);
          if (event.dataTransfer?.files.length) {
            start(event.dataTransfer.files);
          }
        }}
      >
        <p>Drop images here, or</p>
        <label class="button">
          Choose images…
          <input
            ref={input}
            class="visually-hidden"
            type="file"
            name="images"
            accept={ACCEPTED_TYPES.join(",")}
            multiple
            onChange={(event) => {
              const files = event.currentTarget.files;
              if (files?.length) {
                start([...files]);
              }
              event.currentTarget.value = "";
            }}
          />
        </label>
        <p class="hint">JPEG, PNG, WebP or GIF, several at once.</p>
      </div>
      {items.length > 0 && (
        <ul class="uploads" aria-label="Uploads">
          {items.map((item) => (
            <li key={item.key} class={`upload ${item.state}`}>
              <span class="name">{item.name}</span>
              <progress
                max={100}
                value={Math.round(item.progress * 100)}
                aria-label={`Upload of ${item.name}`}
              />
              <span class="percent">{Math.round(item.progress * 100)} %</span>
              <span class="state" role={item.state === "failed" ? "alert" : undefined}>
                {item.state === "uploading" && "Uploading…"}
                {item.state === "done" && "Uploaded"}
                {item.state === "failed" && item.message}
              </span>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

function ImageGrid({ product, images }: { product: Product; images: Image[] }) {
  if (images.length === 0) {
    return <p>No images yet.</p>;
  }
  return (
    <ul class="image-grid" aria-label="Images">
      {images.map((image, index) => (
        <ImageCard
          key={image.id}
          product={product}
          image={image}
          label={`${product.title}, image ${index + 1} of ${images.length}`}
        />
      ))}
    </ul>
  );
}

function ImageCard({ product, image, label }: { product: Product; image: Image; label: string }) {
  const { catalog, session } = useApi();
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const ready = image.state === ImageState.READY;
  const thumbnail = useAuthorizedImage(session, ready ? variantFor(image, 320)?.url : undefined);
  const primary = product.primaryImageId === image.id;

  const act = async (action: () => Promise<unknown>) => {
    setBusy(true);
    setError(undefined);
    try {
      await action();
    } catch (failure) {
      setError(describeError(failure));
    } finally {
      setBusy(false);
    }
  };

  const state =
    image.state === ImageState.READY
      ? "ready"
      : image.state === ImageState.FAILED
        ? "failed"
        : "processing";
  return (
    <li class={`image-card ${state}`} data-image-id={image.id} data-state={state}>
      <div class="frame">
        {state === "ready" && thumbnail && <img src={thumbnail} alt={label} />}
        {state === "ready" && !thumbnail && <span class="placeholder">Loading…</span>}
        {state === "processing" && (
          <span class="placeholder" role="status">
            Processing…
          </span>
        )}
        {state === "failed" && (
          <span class="placeholder failed" role="alert">
            Failed: {image.failureReason || "the image could not be processed."}
          </span>
        )}
      </div>
      <div class="meta">
        {image.width > 0 && (
          <span>
            {image.width}×{image.height}
          </span>
        )}
        {primary && <span class="badge primary">Primary</span>}
      </div>
      <div class="actions">
        {ready && !primary && (
          <button
            type="button"
            disabled={busy}
            onClick={() =>
              act(() => catalog.setPrimaryImage({ productId: product.id, imageId: image.id }))
            }
            aria-label={`Make ${label} the primary image`}
          >
            Make primary
          </button>
        )}
        <button
          type="button"
          class="danger"
          disabled={busy}
          onClick={() => {
            if (confirm("Delete this image?")) {
              void act(() => catalog.deleteImage({ imageId: image.id }));
            }
          }}
          aria-label={`Delete ${label}`}
        >
          Delete
        </button>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </li>
  );
}

