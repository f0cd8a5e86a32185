import { useEffect } from "preact/hooks";
import { useApi, useUser } from "./context.js";
import { navigate, onLinkClick, usePath } from "./router.js";
import { ProductEditor } from "./views/ProductEditor.js";
import { ProductList } from "./views/ProductList.js";
import { SignIn, SignUp } from "./views/SignIn.js";
import { StorefrontGrid, StorefrontProduct } from "./views/Storefront.js";

const ID = "([A-Za-z0-9_-]{1,64})";

export function App() {
  const path = usePath();
  const user = useUser();
  const { session } = useApi();

  let page;
  let match: RegExpExecArray | null;
  if (path === "/") {
    page = <StorefrontGrid />;
  } else if ((match = new RegExp(`^/p/${ID}$`).exec(path))) {
    page = <StorefrontProduct id={match[1]} />;
  } else if (path === "/signin") {
    page = <SignIn next="/console" />;
  } else if (path === "/signup") {
    page = <SignUp next="/console" />;
  } else if (path === "/console") {
    page = user ? <ProductList user={user} /> : <SignIn next={path} />;
  } else if ((match = new RegExp(`^/console/products/${ID}$`).exec(path))) {
    page = user ? <ProductEditor id={match[1]} /> : <SignIn next={path} />;
  } else {
    page = (
      <section>
        <h1>Page not found</h1>
        <p>
          <a href="/" onClick={onLinkClick}>
            Back to the shop
          </a>
        </p>
      </section>
    );
  }

  useEffect(() => {
    document.title = path.startsWith("/console") ? "Storemesh seller console" : "Storemesh shop";
  }, [path]);

  const signOut = async () => {
    try {
      await session.signOut();
    } finally {
      navigate("/");
    }
  };

  return (
    <>
      <header class="top">
        <a class="brand" href="/" onClick={onLinkClick}>
          Storemesh
        </a>
        <nav aria-label="Main">
          <a href="/" onClick={onLinkClick} aria-current={path === "/" ? "page" : undefined}>
            Shop
          </a>
          <a
            href="/console"
            onClick={onLinkClick}
            aria-current={path.startsWith("/console") ? "page" : undefined}
          >
            Seller console
          </a>
          {user ? (
            <>
              <span class="who">{user.displayName}</span>
              <button type="button" class="link" onClick={signOut}>
                Sign out
              </button>
            </>
          ) : (
            <a href="/signin" onClick={onLinkClick}>
              Sign in
            </a>
          )}
        </nav>
      </header>
      <main id="content">{page}</main>
    </>
  );
}
