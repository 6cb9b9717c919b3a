// The command-line grammar every moetrain command shares, driven by the command's CommandSpec
// (which also prints its --help, so an option cannot exist without a help line):
//   --name value  or  --name=value; a name may be written snake_case or kebab-case (the same
//                 option: --max_shard_gb = --max-shard-gb); values are kept as written;
//   --flag        a boolean option takes no value (--flag=true / --flag=false also work);
//   -h, --help    anywhere: print the command's help instead of running it;
//   --            ends the options; the words after it are `rest` (commands with passThrough);
// positional words only where the spec declares them. An unknown option is an Error that
// suggests the closest name; a stray word is an Error that names it.
//
// Usage:
//   const args = parseCommandLine(PLOT_COMMAND, ['runs/x', '--out', 'a.svg']);
//   if (args.help) console.log(formatHelp(PLOT_COMMAND));
//   args.positional;   // ['runs/x']
//   args.flags;        // { out: 'a.svg' }  (snake_case names; boolean flags 'true' or 'false')
import { closestName } from '../models/deepseek_v2_config.js';

export interface OptionSpec {
  /** snake_case name; dots for nested training options (`optimizer.lr`). */
  name: string;
  /** Placeholder of the value in help (`N`, `DIR`, `bf16|f32`); null: a boolean flag. */
  value: string | null;
  /** The default, as help shows it; absent when there is none to show. */
  default?: string;
  /** Whether the command refuses to run without it. */
  required?: boolean;
  /** One line: what the option does. */
  help: string;
}

export interface PositionalSpec {
  /** Placeholder in the usage line, e.g. RUN_DIR. */
  name: string;
  help: string;
  required: boolean;
}

export interface CommandSpec {
  /** The word after `moetrain`. */
  name: string;
  /** One line: what the command does. */
  summary: string;
  positionals: readonly PositionalSpec[];
  options: readonly OptionSpec[];
  /** Lines printed after the options (what a value means, where output goes). */
  notes?: readonly string[];
  /** Words after `--` are handed on (their placeholder in the usage line, e.g. "COMMAND ..."). */
  passThrough?: string;
}

export interface ParsedArgs {
  /** Positional words, in order. */
  positional: string[];
  /** Option values by snake_case name; boolean flags are 'true' or 'false'. */
  flags: Record<string, string>;
  /** Words after `--` (passThrough commands only). */
  rest: string[];
  /** -h or --help was given: print formatHelp(spec) and do nothing else. */
  help: boolean;
}

/** `--max-shard-gb` and `--max_shard_gb` both name the option max_shard_gb. */
export function canonicalName(name: string): string {
  return name.replace(/-/g, '_');
}

export function parseCommandLine(spec: CommandSpec, argv: readonly string[]): ParsedArgs {
  const end = argv.indexOf('--');
  const words = end < 0 ? argv : argv.slice(0, end);
  const out: ParsedArgs = { positional: [], flags: {}, rest: [], help: false };
  if (words.includes('--help') || words.includes('-h')) return { ...out, help: true };
  const hint = `moetrain ${spec.name} --help lists its options`;
  if (end >= 0) {
    if (spec.passThrough === undefined) throw new Error(`moetrain ${spec.name} takes nothing after "--"; remove "--" and what follows it (${hint})`);
    out.rest = argv.slice(end + 1);
  }
  const byName = new Map(spec.options.map((o) => [o.name, o]));
  let lastFlag: string | null = null;
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    if (word.startsWith('--')) {
      const body = word.slice(2);
      const eq = body.indexOf('=');
      const written = eq < 0 ? body : body.slice(0, eq);
      const opt = byName.get(canonicalName(written));
      if (opt === undefined) throw new Error(unknownOption(spec, written));
      lastFlag = null;
      if (opt.value === null) {
        const v = eq < 0 ? 'true' : body.slice(eq + 1);
        if (v !== 'true' && v !== 'false') throw new Error(`option --${written} takes no value (write --${written}, or --${written}=true / --${written}=false), got "${v}"`);
        out.flags[opt.name] = v;
        if (eq < 0) lastFlag = written;
        continue;
      }
      let v: string | undefined;
      if (eq >= 0) v = body.slice(eq + 1);
      else {
        v = words[i + 1];
        if (v !== undefined && v.startsWith('--')) v = undefined;
        else i++;
      }
      if (v === undefined || v === '') throw new Error(`option --${written} needs a value (e.g. --${written} ${opt.default ?? opt.value}; ${hint})`);
      out.flags[opt.name] = v;
      continue;
    }
    if (word.startsWith('-') && word.length > 1 && Number.isNaN(Number(word))) {
      throw new Error(`unknown option ${word}: options are written --name (${hint})`);
    }
    if (out.positional.length < spec.positionals.length) {
      out.positional.push(word);
      lastFlag = null;
      continue;
    }
    if (lastFlag !== null) {
      throw new Error(`unexpected word "${word}" after --${lastFlag}, which takes no value (write --${lastFlag}, or --${lastFlag}=false)`);
    }
    const takes = spec.positionals.length === 0 ? 'takes no positional words' : `takes only ${spec.positionals.map((p) => p.name).join(' ')}`;
    throw new Error(`unexpected word "${word}": moetrain ${spec.name} ${takes}; options are written --name value (${hint})`);
  }
  for (const [i, p] of spec.positionals.entries()) {
    if (p.required && out.positional[i] === undefined) throw new Error(`moetrain ${spec.name} needs ${p.name}: ${p.help}; usage: ${usageLine(spec)}`);
  }
  for (const o of spec.options) {
    if (o.required && out.flags[o.name] === undefined) throw new Error(`moetrain ${spec.name} needs --${o.name} ${o.value ?? ''}`.trimEnd() + `: ${o.help}; usage: ${usageLine(spec)}`);
  }
  return out;
}

function unknownOption(spec: CommandSpec, written: string): string {
  const near = closestName(canonicalName(written), spec.options.map((o) => o.name));
  // Suggest in the spelling the user wrote.
  const shown = near !== null && written.includes('-') ? near.replace(/_/g, '-') : near;
  return `unknown option --${written} for moetrain ${spec.name}${shown ? ` (did you mean --${shown}?)` : ''}; moetrain ${spec.name} --help lists its options`;
}

/** `moetrain plot RUN_DIR [--out FILE]`: the positionals, the required options, then [options]. */
export function usageLine(spec: CommandSpec): string {
  const parts = [`moetrain ${spec.name}`];
  for (const p of spec.positionals) parts.push(p.required ? p.name : `[${p.name}]`);
  for (const o of spec.options) if (o.required) parts.push(`--${o.name}${o.value === null ? '' : ` ${o.value}`}`);
  if (spec.options.some((o) => !o.required)) parts.push('[options]');
  if (spec.passThrough !== undefined) parts.push(`-- ${spec.passThrough}`);
  return parts.join(' ');
}

/** The text of `moetrain <command> --help`. */
export function formatHelp(spec: CommandSpec): string {
  const lines = [`usage: ${usageLine(spec)}`, '', spec.summary];
  const rows: [string, string][] = [];
  for (const p of spec.positionals) rows.push([p.name, p.help + (p.required ? '' : ' (optional)')]);
  for (const o of spec.options) {
    const what = [o.required ? '(required)' : '', o.help, o.default !== undefined ? `(default ${o.default})` : ''].filter((x) => x !== '').join(' ');
    rows.push([`--${o.name}${o.value === null ? '' : ` ${o.value}`}`, what]);
  }
  rows.push(['-h, --help', 'print this help']);
  const width = Math.min(30, Math.max(...rows.map(([left]) => left.length)));
  lines.push('', spec.positionals.length > 0 ? 'arguments and options (--snake_case or --kebab-case):' : 'options (--snake_case or --kebab-case):');
  for (const [left, right] of rows) {
    lines.push(left.length > width ? `  ${left}\n  ${' '.repeat(width)}  ${right}` : `  ${left.padEnd(width)}  ${right}`);
  }
  if (spec.notes !== undefined && spec.notes.length > 0) lines.push('', ...spec.notes);
  return lines.join('\n');
}
