import { createContext } from "preact";
import { useContext, useEffect, useState } from "preact/hooks";
import type { Api } from "./api.js";
import type { SignedInUser } from "./session.js";

export const ApiContext = createContext<Api | undefined>(undefined);

export function useApi(): Api {
  const api = useContext(ApiContext);
  if (!api) {
    throw new Error("useApi outside <ApiContext.Provider>");
  }
  return api;
}

/** The signed-in user; re-renders on sign-in and sign-out. */
export function useUser(): SignedInUser | undefined {
  const { session } = useApi();
  const [user, setUser] = useState(session.user);
  useEffect(() => session.subscribe(setUser), [session]);
  return user;
}
