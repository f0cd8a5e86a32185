import { useState } from "preact/hooks";
import { useApi } from "../context.js";
import { describeError } from "../errors.js";
import { navigate, onLinkClick } from "../router.js";

export function SignIn({ next }: { next: string }) {
  const { session } = useApi();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);

  const submit = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      await session.signIn(email, password);
      navigate(next, { replace: location.pathname === "/signin" });
    } catch (failure) {
      setError(describeError(failure));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section class="narrow">
      <h1>Sign in</h1>
      <form onSubmit={submit} aria-describedby={error ? "signin-error" : undefined}>
        <label>
          Email
          <input
            type="email"
            name="email"
            autocomplete="username"
            required
            value={email}
            onInput={(e) => setEmail(e.currentTarget.value)}
          />
        </label>
        <label>
          Password
          <input
            type="password"
            name="password"
            autocomplete="current-password"
            required
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {error && (
          <p id="signin-error" class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
      <p>
        New here?{" "}
        <a href="/signup" onClick={onLinkClick}>
          Create a seller account
        </a>
      </p>
    </section>
  );
}

export function SignUp({ next }: { next: string }) {
  const { session } = useApi();
  const [displayName, setDisplayName] = useState("");
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);

  const submit = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      await session.signUp(email, password, displayName);
      navigate(next, { replace: true });
    } catch (failure) {
      setError(describeError(failure));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section class="narrow">
      <h1>Create a seller account</h1>
      <form onSubmit={submit}>
        <label>
          Shop or display name
          <input
            name="displayName"
            autocomplete="organization"
            required
            maxLength={100}
            value={displayName}
            onInput={(e) => setDisplayName(e.currentTarget.value)}
          />
        </label>
        <label>
          Email
          <input
            type="email"
            name="email"
            autocomplete="username"
            required
            value={email}
            onInput={(e) => setEmail(e.currentTarget.value)}
          />
        </label>
        <label>
          Password <span class="hint">(at least 10 characters)</span>
          <input
            type="password"
            name="password"
            autocomplete="new-password"
            required
            minLength={10}
            maxLength={128}
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {busy ? "Creating…" : "Create account"}
        </button>
      </form>
      <p>
        Already have an account?{" "}
        <a href="/signin" onClick={onLinkClick}>
          Sign in
        </a>
      </p>
    </section>
  );
}
