// The signed-in seller: the access token lives in memory only and is renewed with the refresh
// token shortly before it expires. The refresh token is kept in sessionStorage so a reload of
// the tab keeps the session (closing the tab ends it); signing out revokes its whole family.
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { AuthService, Role, type TokenPair, type User } from "./gen/storemesh/auth/v1/auth_pb.js";
import type { Transport } from "@connectrpc/connect";

const REFRESH_KEY = "storemesh.refreshToken";
const USER_KEY = "storemesh.user";
/** Renew this long before the access token's expiry, so no call carries an expired token. */
const RENEW_MARGIN_MS = 30_000;

export interface SignedInUser {
  id: string;
  email: string;
  displayName: string;
  role: Role;
}

type Listener = (user: SignedInUser | undefined) => void;

export class Session {
  private auth: Client<typeof AuthService>;
  private accessToken?: string;
  private accessExpiresAt = 0;
  private renewing?: Promise<string | undefined>;
  private listeners = new Set<Listener>();
  user?: SignedInUser;

  /** `transport` must not add this session's token (auth calls are public). */
  constructor(transport: Transport) {
    this.auth = createClient(AuthService, transport);
  }

  /** Picks up a session of this tab after a reload; false when there is none (or it ended). */
  async restore(): Promise<boolean> {
    const stored = sessionStorage.getItem(USER_KEY);
    if (!sessionStorage.getItem(REFRESH_KEY) || !stored) {
      return false;
    }
    try {
      this.user = JSON.parse(stored) as SignedInUser;
      return (await this.token()) !== undefined;
    } catch {
      this.forget();
      return false;
    }
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async signIn(email: string, password: string): Promise<SignedInUser> {
    const response = await this.auth.login({ email, password });
    if (!response.tokens || !response.user) {
      throw new Error("The auth service answered without tokens.");
    }
    this.user = fromUser(response.user);
    sessionStorage.setItem(USER_KEY, JSON.stringify(this.user));
    this.keep(response.tokens);
    this.notify();
    return this.user;
  }

  /** Registers a seller account and signs it in. */
  async signUp(email: string, password: string, displayName: string): Promise<SignedInUser> {
    await this.auth.register({ email, password, displayName, role: Role.SELLER });
    return this.signIn(email, password);
  }

  /** Revokes the refresh token's family and forgets the session (locally even if offline). */
  async signOut(): Promise<void> {
    const refreshToken = sessionStorage.getItem(REFRESH_KEY);
    this.forget();
    if (refreshToken) {
      await this.auth.logout({ refreshToken });
    }
  }

  /** A valid access token (renewed when it is about to expire), or undefined when signed out. */
  async token(): Promise<string | undefined> {
    if (this.accessToken && Date.now() < this.accessExpiresAt - RENEW_MARGIN_MS) {
      return this.accessToken;
    }
    return this.renew();
  }

  /** Renews now (e.g. after the services refused the current token); one renewal at a time. */
  renew(): Promise<string | undefined> {
    this.renewing ??= this.refresh().finally(() => {
      this.renewing = undefined;
    });
    return this.renewing;
  }

  private async refresh(): Promise<string | undefined> {
    const refreshToken = sessionStorage.getItem(REFRESH_KEY);
    if (!refreshToken) {
      return undefined;
    }
    try {
      const response = await this.auth.refresh({ refreshToken });
      if (!response.tokens) {
        throw new Error("The auth service answered without tokens.");
      }
      this.keep(response.tokens);
      return this.accessToken;
    } catch (error) {
      // A refresh token that is expired, revoked or already used ends the session; anything
      // else (offline, overloaded) is passed on and the session kept for a later try.
      if (error instanceof ConnectError && error.code === Code.Unauthenticated) {
        this.forget();
        return undefined;
      }
      throw error;
    }
  }

  private keep(tokens: TokenPair): void {
    this.accessToken = tokens.accessToken;
    this.accessExpiresAt = tokens.accessTokenExpireTime
      ? timestampDate(tokens.accessTokenExpireTime).getTime()
      : Date.now() + 60_000;
    sessionStorage.setItem(REFRESH_KEY, tokens.refreshToken);
  }

  private forget(): void {
    const wasSignedIn = this.user !== undefined;
    this.accessToken = undefined;
    this.accessExpiresAt = 0;
    this.user = undefined;
    sessionStorage.removeItem(REFRESH_KEY);
    sessionStorage.removeItem(USER_KEY);
    if (wasSignedIn) {
      this.notify();
    }
  }

  private notify(): void {
    for (const listener of this.listeners) {
      listener(this.user);
    }
  }
}

function fromUser(user: User): SignedInUser {
  return { id: user.id, email: user.email, displayName: user.displayName, role: user.role };
}
