// Hugging Face's DeepseekV2 parameter names: the one table between the typed structure
// (deepseek_v2_weights.ts) and the names in checkpoints and HF folders. Routed experts are
// named by their global id, so a checkpoint written by any part (a pipeline stage, an
// expert-parallel rank) uses the same names as one written by the whole model.
import type { DeepseekV2Config } from './deepseek_v2_config.js';
import { buildWeights, wholeModel, type DeepseekV2Weights, type Mlp, type ModelPart } from './deepseek_v2_weights.js';

/** Every parameter of `w` with its HF name, in the model's order. */
export function namedParameters<T>(w: DeepseekV2Weights<T>): { name: string; param: T }[] {
  const out: { name: string; param: T }[] = [];
  const add = (name: string, param: T) => { out.push({ name, param }); };
  const mlp = (prefix: string, m: Mlp<T>) => {
    add(`${prefix}.gate_proj.weight`, m.gate);
    add(`${prefix}.up_proj.weight`, m.up);
    add(`${prefix}.down_proj.weight`, m.down);
  };
  if (w.embed !== null) add('model.embed_tokens.weight', w.embed);
  for (const l of w.layers) {
    const p = `model.layers.${l.index}`, a = l.attn;
    add(`${p}.input_layernorm.weight`, l.inputNorm);
    if (a.qProj !== null) add(`${p}.self_attn.q_proj.weight`, a.qProj);
    if (a.qLora !== null) {
      add(`${p}.self_attn.q_a_proj.weight`, a.qLora.aProj);
      add(`${p}.self_attn.q_a_layernorm.weight`, a.qLora.aNorm);
      add(`${p}.self_attn.q_b_proj.weight`, a.qLora.bProj);
    }
    add(`${p}.self_attn.kv_a_proj_with_mqa.weight`, a.kvAProj);
    add(`${p}.self_attn.kv_a_layernorm.weight`, a.kvANorm);
    add(`${p}.self_attn.kv_b_proj.weight`, a.kvBProj);
    add(`${p}.self_attn.o_proj.weight`, a.oProj);
    add(`${p}.post_attention_layernorm.weight`, l.postNorm);
    if (l.mlp !== null) mlp(`${p}.mlp`, l.mlp);
    if (l.moe !== null) {
      add(`${p}.mlp.gate.weight`, l.moe.router);
      l.moe.experts.forEach((e, i) => mlp(`${p}.mlp.experts.${l.moe!.firstExpert + i}`, e));
      if (l.moe.shared !== null) mlp(`${p}.mlp.shared_experts`, l.moe.shared);
    }
  }
  if (w.norm !== null) add('model.norm.weight', w.norm);
  if (w.lmHead !== null) add('lm_head.weight', w.lmHead);
  return out;
}

/** HF name and shape of every parameter of `part` (default: the whole model), in the model's order; allocates nothing. */
export function parameterShapes(c: DeepseekV2Config, part: ModelPart = wholeModel(c)): { name: string; shape: number[] }[] {
  return namedParameters(buildWeights(c, part, (s) => s)).map(({ name, param }) => ({ name, shape: [...param.shape] }));
}
