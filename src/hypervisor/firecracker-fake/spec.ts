// The fake Firecracker's request validator: Firecracker's own OpenAPI spec
// (firecracker.yaml here is a verbatim copy of ../shared/specs/firecracker.yaml,
// Swagger 2.0, API 1.17.0-dev, Apache-2.0), read at start-up, so the fake holds
// the driver to the published definitions rather than to a hand copy of them.
//
// Rules (each answered with 400 and the spec's `Error` shape, {fault_message}):
// - S1 method + path must be an operation of `paths` (Firecracker answers
//   "Invalid request method and/or path" otherwise).
// - S2 the body is JSON and matches the operation's body schema: `required`
//   fields present, no field outside `properties` (Firecracker's request types
//   deserialize with serde's deny_unknown_fields, so unknown fields are
//   refused, unless the definition has additionalProperties), JSON types as
//   `type`/`format` say, `enum` values, `minimum`/`maximum`, array `items`.
//   Messages follow serde's wording ("missing field `x`", "unknown field `x`",
//   "unknown variant `x`").
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

export interface Schema {
  type?: 'object' | 'string' | 'integer' | 'number' | 'boolean' | 'array';
  format?: string;
  required?: string[];
  properties?: Record<string, Schema>;
  additionalProperties?: unknown;
  enum?: unknown[];
  minimum?: number;
  maximum?: number;
  items?: Schema;
  $ref?: string;
}

interface Operation {
  parameters?: { in: string; name: string; schema?: Schema }[];
}

const doc = parse(readFileSync(new URL('./firecracker.yaml', import.meta.url), 'utf8')) as {
  paths: Record<string, Record<string, Operation>>;
  definitions: Record<string, Schema>;
};

/** The spec's definitions, by name. */
export const definitions = doc.definitions;

export interface Route {
  /** Spec path template, e.g. `/drives/{drive_id}`. */
  template: string;
  /** Path parameters by name. */
  params: Record<string, string>;
  /** Body schema, or null when the operation takes no body. */
  body: Schema | null;
}

/** S1: the spec operation for `method url`, or null. */
export function route(method: string, url: string): Route | null {
  const path = url.split('?')[0]!;
  for (const [template, ops] of Object.entries(doc.paths)) {
    const names: string[] = [];
    const re = new RegExp(`^${template.replace(/\{(\w+)\}/g, (_, n: string) => (names.push(n), '([^/]+)'))}$`);
    const m = re.exec(path);
    const op = m ? ops[method.toLowerCase()] : undefined;
    if (!m || !op) continue;
    const params = Object.fromEntries(names.map((n, i) => [n, decodeURIComponent(m[i + 1]!)]));
    const body = op.parameters?.find((p) => p.in === 'body')?.schema ?? null;
    return { template, params, body };
  }
  return null;
}

function resolve(s: Schema): Schema {
  if (!s.$ref) return s;
  const name = s.$ref.replace('#/definitions/', '');
  const d = doc.definitions[name];
  if (!d) throw new Error(`spec: no definition ${name}`);
  return d;
}

const quote = (xs: readonly unknown[]) => xs.map((x) => `\`${String(x)}\``).join(', ');

/** S2: the first way `value` breaks `schema`, or null when it conforms. */
export function validate(schema: Schema, value: unknown, at = 'body'): string | null {
  const s = resolve(schema);
  if (s.enum && !s.enum.map(String).includes(String(value))) return `${at}: unknown variant \`${String(value)}\`, expected one of ${quote(s.enum)}`;
  switch (s.type) {
    case 'object': {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return `${at}: invalid type: expected a struct`;
      const obj = value as Record<string, unknown>;
      const props = s.properties ?? {};
      for (const k of s.required ?? []) if (!(k in obj)) return `${at}: missing field \`${k}\``;
      for (const [k, v] of Object.entries(obj)) {
        const p = props[k];
        if (!p) {
          if (s.additionalProperties !== undefined) continue;
          return `${at}: unknown field \`${k}\`, expected one of ${quote(Object.keys(props))}`;
        }
        const err = validate(p, v, `${at}.${k}`);
        if (err) return err;
      }
      return null;
    }
    case 'array': {
      if (!Array.isArray(value)) return `${at}: invalid type: expected a sequence`;
      for (const [i, v] of value.entries()) {
        const err = s.items ? validate(s.items, v, `${at}[${i}]`) : null;
        if (err) return err;
      }
      return null;
    }
    case 'string':
      return typeof value === 'string' ? null : `${at}: invalid type: expected a string`;
    case 'boolean':
      return typeof value === 'boolean' ? null : `${at}: invalid type: expected a boolean`;
    case 'integer':
    case 'number': {
      if (typeof value !== 'number' || (s.type === 'integer' && !Number.isInteger(value))) return `${at}: invalid type: expected ${s.type === 'integer' ? 'an integer' : 'a number'}`;
      if (s.minimum !== undefined && value < s.minimum) return `${at}: ${value} is below the minimum ${s.minimum}`;
      if (s.maximum !== undefined && value > s.maximum) return `${at}: ${value} is above the maximum ${s.maximum}`;
      return null;
    }
    default:
      return null;
  }
}
