// The embedded default model: DeepSeek-V2's architecture at a size a 2-core CPU trains in a
// minute (first layer dense, the rest MoE with 8 routed experts top-2 and one shared expert).
import { parseDeepseekV2Config, type DeepseekV2Config } from './deepseek_v2_config.js';

export const TINY_CONFIG_JSON = {
  vocab_size: 257,
  hidden_size: 64,
  intermediate_size: 192,
  moe_intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 4,
  q_lora_rank: null,
  kv_lora_rank: 32,
  qk_nope_head_dim: 16,
  qk_rope_head_dim: 8,
  v_head_dim: 16,
  n_routed_experts: 8,
  n_shared_experts: 1,
  num_experts_per_tok: 2,
  norm_topk_prob: false,
  routed_scaling_factor: 1.0,
  first_k_dense_replace: 1,
  moe_layer_freq: 1,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  rope_scaling: null,
  max_position_embeddings: 4096,
  initializer_range: 0.02,
  tie_word_embeddings: false,
  aux_loss_alpha: 0.001,
  bos_token_id: null,
  eos_token_id: 256,
};

export function tinyConfig(): DeepseekV2Config {
  return parseDeepseekV2Config(TINY_CONFIG_JSON, 'built-in tiny config');
}
