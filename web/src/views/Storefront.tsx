// What shoppers see, without signing in: published products and their ready images, loaded
// by the browser straight from the images function's public URLs (srcset, lazily).
import { useEffect, useState } from "preact/hooks";
import {
  ProductVisibility,
  type Image,
  type Product,
} from "../gen/storemesh/catalog/v1/catalog_pb.js";
import { useApi } from "../context.js";
import { describeError } from "../errors.js";
import { isReady, variantFor } from "../images.js";
import { formatPrice } from "../money.js";
import { onLinkClick } from "../router.js";

/** Slot widths for `sizes`, matching the grid's CSS columns (see styles.css). */
const CARD_SIZES = "(min-width: 1100px) 260px, (min-width: 700px) 30vw, 45vw";
const HERO_SIZES = "(min-width: 900px) 640px, 100vw";

interface Entry {
  product: Product;
  image?: Image;
}

/** The product's ready images; its primary one first. */
async function readyImages(
  storefront: ReturnType<typeof useApi>["storefront"],
  product: Product,
  signal: AbortSignal,
): Promise<Image[]> {
  const response = await storefront.listProductImages({ productId: product.id }, { signal });
  const images = response.images.filter(isReady);
  return images.sort(
    (a, b) =>
      Number(b.id === product.primaryImageId) - Number(a.id === product.primaryImageId),
  );
}

export function StorefrontGrid() {
  const { storefront } = useApi();
  const [entries, setEntries] = useState<Entry[]>();
  const [error, setError] = useState<string>();

  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    (async () => {
      const page = await storefront.listProducts(
        { visibility: ProductVisibility.PUBLISHED, pageSize: 48 },
        { signal },
      );
      const products = [...page.products].reverse();
      setEntries(products.map((product) => ({ product })));
      // The images of each card, in parallel; a card whose images fail keeps its text.
      await Promise.all(
        products.map(async (product) => {
          const images = await readyImages(storefront, product, signal).catch(() => []);
          setEntries((list) =>
            list?.map((entry) =>
              entry.product.id === product.id ? { ...entry, image: images[0] } : entry,
            ),
          );
        }),
      );
    })().catch((failure: unknown) => {
      if (!signal.aborted) {
        setError(describeError(failure));
      }
    });
    return () => controller.abort();
  }, [storefront]);

  return (
    <section>
      <h1>Shop</h1>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {entries === undefined && !error && <p aria-live="polite">Loading…</p>}
      {entries?.length === 0 && <p>Nothing for sale yet.</p>}
      {entries && entries.length > 0 && (
        <ul class="shop-grid" aria-label="Products">
          {entries.map(({ product, image }) => (
            <li key={product.id} class="shop-card" data-product-id={product.id}>
              <a href={`/p/${product.id}`} onClick={onLinkClick}>
                <div class="frame">
                  {image ? (
                    <ProductImage image={image} alt={product.title} sizes={CARD_SIZES} width={320} />
                  ) : (
                    <span class="placeholder">No image</span>
                  )}
                </div>
                <span class="title">{product.title}</span>
              </a>
              <span class="price">{formatPrice(product.price)}</span>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

export function StorefrontProduct({ id }: { id: string }) {
  const { storefront } = useApi();
  const [product, setProduct] = useState<Product>();
  const [images, setImages] = useState<Image[]>([]);
  const [error, setError] = useState<string>();

  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    (async () => {
      const response = await storefront.getProduct({ id }, { signal });
      if (!response.product) {
        return;
      }
      setProduct(response.product);
      setImages(await readyImages(storefront, response.product, signal));
    })().catch((failure: unknown) => {
      if (!signal.aborted) {
        setError(describeError(failure));
      }
    });
    return () => controller.abort();
  }, [storefront, id]);

  if (error) {
    return (
      <section>
        <p class="error" role="alert">
          {error}
        </p>
        <a href="/" onClick={onLinkClick}>
          Back to the shop
        </a>
      </section>
    );
  }
  if (!product) {
    return <p aria-live="polite">Loading…</p>;
  }
  return (
    <article class="product-page">
      <div class="gallery">
        {images.length === 0 && <span class="placeholder">No image</span>}
        {images.map((image, index) => (
          <ProductImage
            key={image.id}
            image={image}
            alt={images.length > 1 ? `${product.title}, image ${index + 1} of ${images.length}` : product.title}
            sizes={index === 0 ? HERO_SIZES : CARD_SIZES}
            width={index === 0 ? 640 : 320}
            eager={index === 0}
          />
        ))}
      </div>
      <div class="details">
        <h1>{product.title}</h1>
        <p class="price">{formatPrice(product.price)}</p>
        {product.description && <p>{product.description}</p>}
        {product.tags.length > 0 && (
          <ul class="tags" aria-label="Tags">
            {product.tags.map((tag) => (
              <li key={tag}>{tag}</li>
            ))}
          </ul>
        )}
        <a href="/" onClick={onLinkClick}>
          ← All products
        </a>
      </div>
    </article>
  );
}

function ProductImage({
  image,
  alt,
  sizes,
  width,
  eager,
}: {
  image: Image;
  alt: string;
  sizes: string;
  width: number;
  eager?: boolean;
}) {
  const fallback = variantFor(image, width);
  if (!fallback) {
    return <span class="placeholder">No image</span>;
  }
  return (
    <img
      src={fallback.url}
      srcset={image.srcset}
      sizes={sizes}
      alt={alt}
      width={fallback.width}
      height={fallback.height}
      loading={eager ? "eager" : "lazy"}
      decoding="async"
    />
  );
}
