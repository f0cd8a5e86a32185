import { useEffect, useState } from "preact/hooks";
import { ProductVisibility, type Product } from "../gen/storemesh/catalog/v1/catalog_pb.js";
import { useApi } from "../context.js";
import { describeError } from "../errors.js";
import { CURRENCIES, formatPrice, parseAmount } from "../money.js";
import { navigate, onLinkClick } from "../router.js";
import type { SignedInUser } from "../session.js";

export function ProductList({ user }: { user: SignedInUser }) {
  const { catalog } = useApi();
  const [products, setProducts] = useState<Product[]>();
  const [error, setError] = useState<string>();

  useEffect(() => {
    const controller = new AbortController();
    (async () => {
      const all: Product[] = [];
      let pageToken = "";
      do {
        const page = await catalog.listProducts(
          { sellerId: user.id, pageSize: 100, pageToken },
          { signal: controller.signal },
        );
        all.push(...page.products);
        pageToken = page.nextPageToken;
      } while (pageToken);
      setProducts(all.reverse());
    })().catch((failure: unknown) => {
      if (!controller.signal.aborted) {
        setError(describeError(failure));
      }
    });
    return () => controller.abort();
  }, [catalog, user.id]);

  return (
    <section>
      <h1>Your products</h1>
      <CreateProduct />
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {products === undefined && !error && <p aria-live="polite">Loading…</p>}
      {products?.length === 0 && <p>No products yet: create your first one above.</p>}
      {products && products.length > 0 && (
        <table class="products">
          <thead>
            <tr>
              <th scope="col">Title</th>
              <th scope="col">Price</th>
              <th scope="col">Status</th>
            </tr>
          </thead>
          <tbody>
            {products.map((product) => (
              <tr key={product.id}>
                <td>
                  <a href={`/console/products/${product.id}`} onClick={onLinkClick}>
                    {product.title}
                  </a>
                </td>
                <td>{formatPrice(product.price)}</td>
                <td>
                  <VisibilityBadge visibility={product.visibility} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

export function VisibilityBadge({ visibility }: { visibility: ProductVisibility }) {
  return visibility === ProductVisibility.PUBLISHED ? (
    <span class="badge published">Published</span>
  ) : (
    <span class="badge draft">Draft</span>
  );
}

function CreateProduct() {
  const { catalog } = useApi();
  const [title, setTitle] = useState("");
  const [amount, setAmount] = useState("");
  const [currency, setCurrency] = useState("EUR");
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  // One id per product being created: a retried submit creates it once.
  const [requestId, setRequestId] = useState(() => crypto.randomUUID());

  const submit = async (event: Event) => {
    event.preventDefault();
    const amountMinor = parseAmount(amount, currency);
    if (amountMinor === undefined) {
      setError(`Please enter the price as a number such as 19.99 (${currency}).`);
      return;
    }
    setBusy(true);
    setError(undefined);
    try {
      const response = await catalog.createProduct({
        title,
        price: { amountMinor, currencyCode: currency },
        requestId,
      });
      setRequestId(crypto.randomUUID());
      if (response.product) {
        navigate(`/console/products/${response.product.id}`);
      }
    } catch (failure) {
      setError(describeError(failure));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="create" onSubmit={submit} aria-label="New product">
      <label>
        Title
        <input
          name="title"
          required
          maxLength={200}
          value={title}
          onInput={(e) => setTitle(e.currentTarget.value)}
        />
      </label>
      <label>
        Price
        <input
          name="price"
          inputMode="decimal"
          required
          placeholder="19.99"
          value={amount}
          onInput={(e) => setAmount(e.currentTarget.value)}
        />
      </label>
      <label>
        Currency
        <select name="currency" value={currency} onChange={(e) => setCurrency(e.currentTarget.value)}>
          {CURRENCIES.map((code) => (
            <option key={code} value={code}>
              {code}
            </option>
          ))}
        </select>
      </label>
      <button type="submit" disabled={busy}>
        {busy ? "Creating…" : "Create product"}
      </button>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}
