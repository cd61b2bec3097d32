import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function when(ts: Timestamp | undefined, empty = "—"): string {
  return ts ? dateTime.format(timestampDate(ts)) : empty;
}

export function iso(ts: Timestamp | undefined): string | undefined {
  return ts ? timestampDate(ts).toISOString() : undefined;
}

export function plural(n: number | bigint, one: string, many = one + "s"): string {
  return `${n.toLocaleString()} ${Number(n) === 1 ? one : many}`;
}
