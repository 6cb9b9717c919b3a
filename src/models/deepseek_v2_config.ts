// The DeepSeek-V2 configuration, read from a Hugging Face config.json: every field checked for
// type and consistency up front, so a typo or an impossible size fails before any allocation.
import { readFileSync } from 'node:fs';
import type { RopeScaling } from '../nn/rope_tables.js';

export interface DeepseekV2Config {
  vocab_size: number;
  hidden_size: number;
  /** Width of the dense SwiGLU in the first first_k_dense_replace layers. */
  intermediate_size: number;
  /** Width of each routed expert's SwiGLU (shared experts: n_shared_experts × this). */
  moe_intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  /** null: a single q_proj; a number: q_a_proj → RMSNorm → q_b_proj through this rank. */
  q_lora_rank: number | null;
  kv_lora_rank: number;
  qk_nope_head_dim: number;
  qk_rope_head_dim: number;
  v_head_dim: number;
  n_routed_experts: number;
  n_shared_experts: number;
  num_experts_per_tok: number;
  /** Renormalise the top-k router weights to sum to 1. */
  norm_topk_prob: boolean;
  routed_scaling_factor: number;
  /** Layers [0, first_k_dense_replace) use the dense MLP; the rest are MoE (moe_layer_freq 1). */
  first_k_dense_replace: number;
  moe_layer_freq: number;
  rms_norm_eps: number;
  rope_theta: number;
  rope_scaling: RopeScaling | null;
  max_position_embeddings: number;
  initializer_range: number;
  tie_word_embeddings: boolean;
  /** Load-balance loss coefficient as HF names it; moetrain's training config may override it. */
  aux_loss_alpha: number;
  bos_token_id: number | null;
  eos_token_id: number | null;
}

type Kind = 'int' | 'int?' | 'number' | 'bool' | 'rope' | 'fixed' | 'ignored';

/** Every field moetrain accepts, with its kind. HF bookkeeping fields are accepted and ignored. */
const FIELDS: Record<string, Kind> = {
  vocab_size: 'int', hidden_size: 'int', intermediate_size: 'int', moe_intermediate_size: 'int',
  num_hidden_layers: 'int', num_attention_heads: 'int', num_key_value_heads: 'int', q_lora_rank: 'int?',
  kv_lora_rank: 'int', qk_nope_head_dim: 'int', qk_rope_head_dim: 'int', v_head_dim: 'int',
  n_routed_experts: 'int', n_shared_experts: 'int', num_experts_per_tok: 'int', norm_topk_prob: 'bool',
  routed_scaling_factor: 'number', first_k_dense_replace: 'int', moe_layer_freq: 'int', rms_norm_eps: 'number',
  rope_theta: 'number', rope_scaling: 'rope', max_position_embeddings: 'int', initializer_range: 'number',
  tie_word_embeddings: 'bool', aux_loss_alpha: 'number', bos_token_id: 'int?', eos_token_id: 'int?',
  n_group: 'int', topk_group: 'int',
  hidden_act: 'fixed', scoring_func: 'fixed', topk_method: 'fixed', attention_bias: 'fixed',
  architectures: 'ignored', attention_dropout: 'ignored', auto_map: 'ignored', model_type: 'ignored', pretraining_tp: 'ignored',
  seq_aux: 'ignored', torch_dtype: 'ignored', transformers_version: 'ignored', use_cache: 'ignored', ep_size: 'ignored',
  _name_or_path: 'ignored',
};

/** Fields whose value moetrain implements one way only: anything else would train another model. */
const FIXED: Record<string, unknown> = { hidden_act: 'silu', scoring_func: 'softmax', topk_method: 'greedy', attention_bias: false };

const DEFAULTS: Partial<DeepseekV2Config> = {
  q_lora_rank: null, norm_topk_prob: false, routed_scaling_factor: 1, first_k_dense_replace: 0, moe_layer_freq: 1,
  rms_norm_eps: 1e-6, rope_theta: 10000, rope_scaling: null, max_position_embeddings: 4096, initializer_range: 0.02,
  tie_word_embeddings: false, aux_loss_alpha: 0.001, bos_token_id: null, eos_token_id: null, n_shared_experts: 0,
};

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) for (let j = 1; j <= b.length; j++) {
    d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  }
  return d[a.length]![b.length]!;
}

export function closestName(name: string, names: readonly string[]): string | null {
  let best: string | null = null, bestD = Infinity;
  for (const n of names) { const dd = editDistance(name, n); if (dd < bestD) { bestD = dd; best = n; } }
  return bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : null;
}

function fail(source: string, msg: string): never {
  throw new Error(`${source}: ${msg}`);
}

/** Validates a parsed config.json object; `source` names it in errors (a path or "model config"). */
export function parseDeepseekV2Config(raw: unknown, source: string): DeepseekV2Config {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(source, 'expected a JSON object');
  const obj = raw as Record<string, unknown>;
  const out: Record<string, unknown> = { ...DEFAULTS };
  for (const [key, value] of Object.entries(obj)) {
    const kind = FIELDS[key];
    if (!kind) {
      const near = closestName(key, Object.keys(FIELDS));
      fail(source, `unknown field "${key}"${near ? ` (did you mean "${near}"?)` : ''}; remove it or fix its name`);
    }
    if (kind === 'ignored') continue;
    if (kind === 'fixed') {
      if (value !== FIXED[key]) fail(source, `"${key}": ${JSON.stringify(value)} is not supported (moetrain implements ${JSON.stringify(FIXED[key])} only)`);
      continue;
    }
    const bad = (want: string) => fail(source, `field "${key}" must be ${want}, got ${JSON.stringify(value)}`);
    switch (kind) {
      case 'int': if (!Number.isInteger(value) || (value as number) < 0) bad('a non-negative integer'); break;
      case 'int?': if (value !== null && (!Number.isInteger(value) || (value as number) < 0)) bad('a non-negative integer or null'); break;
      case 'number': if (typeof value !== 'number' || !Number.isFinite(value)) bad('a number'); break;
      case 'bool': if (typeof value !== 'boolean') bad('true or false'); break;
      case 'rope': if (value !== null) out[key] = parseRopeScaling(value, source); continue;
      default: kind satisfies never;
    }
    out[key] = value;
  }
  const required = ['vocab_size', 'hidden_size', 'intermediate_size', 'moe_intermediate_size', 'num_hidden_layers',
    'num_attention_heads', 'kv_lora_rank', 'qk_nope_head_dim', 'qk_rope_head_dim', 'v_head_dim', 'n_routed_experts', 'num_experts_per_tok'];
  for (const r of required) if (out[r] === undefined) fail(source, `missing required field "${r}"`);
  const c = out as unknown as DeepseekV2Config;
  const heads = obj['num_key_value_heads'];
  if (heads !== undefined && heads !== c.num_attention_heads) fail(source, `num_key_value_heads (${heads}) must equal num_attention_heads (${c.num_attention_heads}) for MLA`);
  for (const k of ['vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'kv_lora_rank', 'qk_nope_head_dim', 'v_head_dim', 'n_routed_experts', 'num_experts_per_tok', 'moe_intermediate_size'] as const) {
    if ((c[k] as number) <= 0) fail(source, `"${k}" must be at least 1`);
  }
  if (c.q_lora_rank !== null && c.q_lora_rank <= 0) fail(source, '"q_lora_rank" must be at least 1, or null for a single q_proj');
  if (c.qk_rope_head_dim <= 0 || c.qk_rope_head_dim % 2 !== 0) fail(source, `"qk_rope_head_dim" must be a positive even number (rotary pairs), got ${c.qk_rope_head_dim}`);
  if (c.num_experts_per_tok > c.n_routed_experts) {
    fail(source, `num_experts_per_tok (${c.num_experts_per_tok}) is larger than n_routed_experts (${c.n_routed_experts}); top-k cannot pick more experts than exist`);
  }
  if (c.first_k_dense_replace > c.num_hidden_layers) fail(source, `first_k_dense_replace (${c.first_k_dense_replace}) exceeds num_hidden_layers (${c.num_hidden_layers})`);
  if (c.moe_layer_freq !== 1) fail(source, `moe_layer_freq ${c.moe_layer_freq} is not supported (only 1, as in every DeepSeek-V2 release)`);
  if (c.first_k_dense_replace > 0 && c.intermediate_size <= 0) fail(source, '"intermediate_size" must be at least 1 when there are dense layers');
  if (c.tie_word_embeddings) fail(source, 'tie_word_embeddings true is not supported (DeepSeek-V2 unties lm_head)');
  return c;
}

function parseRopeScaling(v: unknown, source: string): RopeScaling {
  if (typeof v !== 'object' || v === null) fail(source, '"rope_scaling" must be an object or null');
  const r = v as Record<string, unknown>;
  const type = r['type'] ?? r['rope_type'];
  if (type !== 'yarn') fail(source, `rope_scaling type ${JSON.stringify(type)} is not supported (only "yarn"; use null for plain RoPE)`);
  const num = (k: string, d?: number): number => {
    const x = r[k] ?? d;
    if (typeof x !== 'number' || !Number.isFinite(x)) fail(source, `rope_scaling.${k} must be a number`);
    return x;
  };
  const known = ['type', 'rope_type', 'factor', 'original_max_position_embeddings', 'beta_fast', 'beta_slow', 'mscale', 'mscale_all_dim'];
  for (const k of Object.keys(r)) if (!known.includes(k)) fail(source, `unknown field "rope_scaling.${k}"`);
  return {
    type: 'yarn', factor: num('factor'), original_max_position_embeddings: num('original_max_position_embeddings', 4096),
    beta_fast: num('beta_fast', 32), beta_slow: num('beta_slow', 1), mscale: num('mscale', 1), mscale_all_dim: num('mscale_all_dim', 0),
  };
}

export function loadDeepseekV2Config(path: string): DeepseekV2Config {
  let text: string;
  try { text = readFileSync(path, 'utf8'); } catch (e) { throw new Error(`${path}: cannot read the model config (${(e as NodeJS.ErrnoException).code ?? e}); pass an existing config.json`); }
  let raw: unknown;
  try { raw = JSON.parse(text); } catch (e) { throw new Error(`${path}: not valid JSON (${(e as Error).message})`); }
  return parseDeepseekV2Config(raw, path);
}

export function isMoeLayer(c: DeepseekV2Config, layer: number): boolean {
  return layer >= c.first_k_dense_replace;
}

/** Fields Hugging Face types as float: written with a decimal point even when integral. */
const FLOAT_FIELDS = ['routed_scaling_factor', 'rope_theta', 'rms_norm_eps', 'initializer_range', 'aux_loss_alpha', 'attention_dropout'];

/** config.json text that both moetrain and transformers' DeepseekV2Config accept. */
export function formatHfConfig(c: DeepseekV2Config): string {
  const full = {
    architectures: ['DeepseekV2ForCausalLM'], model_type: 'deepseek_v2', num_key_value_heads: c.num_attention_heads,
    hidden_act: 'silu', scoring_func: 'softmax', topk_method: 'greedy', attention_bias: false, attention_dropout: 0, ...c,
  };
  let text = JSON.stringify(full, null, 2);
  for (const k of FLOAT_FIELDS) text = text.replace(new RegExp(`^(  "${k}": )(-?\\d+)(,?)$`, 'm'), '$1$2.0$3');
  return text + '\n';
}
