// Prices: `Money` is an amount in the currency's minor unit (cents) and an ISO 4217 code.
import type { Money } from "./gen/storemesh/catalog/v1/catalog_pb.js";

/** Currencies offered in the console's price field; the catalog accepts every ISO 4217 one. */
export const CURRENCIES = ["EUR", "USD", "GBP", "CHF", "SEK", "DKK", "NOK", "PLN", "JPY"];

/** Digits after the decimal point of `currency` (2 for EUR, 0 for JPY). */
export function minorDigits(currency: string): number {
  try {
    return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
      .maximumFractionDigits ?? 2;
  } catch {
    return 2;
  }
}

/** `price` for people, in the browser's locale: "€19.99", "19,99 €", "¥1,500". */
export function formatPrice(price: Money | undefined, locale?: string): string {
  if (!price) {
    return "";
  }
  const digits = minorDigits(price.currencyCode);
  const amount = Number(price.amountMinor) / 10 ** digits;
  try {
    return new Intl.NumberFormat(locale, { style: "currency", currency: price.currencyCode }).format(
      amount,
    );
  } catch {
    return `${amount.toFixed(digits)} ${price.currencyCode}`;
  }
}

/** The decimal text of a price field ("19.99" or "19,99") in minor units; undefined if it is not one. */
export function parseAmount(text: string, currency: string): bigint | undefined {
  const digits = minorDigits(currency);
  const match = /^\s*(\d{1,12})(?:[.,](\d*))?\s*$/.exec(text);
  if (!match) {
    return undefined;
  }
  const fraction = match[2] ?? "";
  if (fraction.length > digits) {
    return undefined;
  }
  return BigInt(match[1]) * 10n ** BigInt(digits) + BigInt(fraction.padEnd(digits, "0") || "0");
}

/** `price`'s amount as the decimal text a price field shows. */
export function amountText(price: Money | undefined): string {
  if (!price) {
    return "";
  }
  const digits = minorDigits(price.currencyCode);
  if (digits === 0) {
    return price.amountMinor.toString();
  }
  const text = price.amountMinor.toString().padStart(digits + 1, "0");
  return `${text.slice(0, -digits)}.${text.slice(-digits)}`;
}
