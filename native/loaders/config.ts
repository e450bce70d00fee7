// Hugging Face config.json -> the engine's ModelConfig, refusing architecture variants the engine does not run.
import { ModelConfig } from '../../contracts/models';
import { CheckpointError } from './errors';

type Json = Record<string, unknown>;

function int(c: Json, key: string, file: string, fallback?: number): number {
  const v = c[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new CheckpointError(file, `config field '${key}' must be a positive integer, got ${JSON.stringify(c[key])}`);
  }
  return v;
}

function positive(c: Json, key: string, file: string, fallback?: number): number {
  const v = c[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new CheckpointError(file, `config field '${key}' must be a positive number, got ${JSON.stringify(c[key])}`);
  }
  return v;
}

/** Refuses a boolean flag whose non-default value changes the architecture in a way the engine does not implement. */
function requireFlag(c: Json, key: string, expected: boolean, file: string): void {
  const v = c[key];
  if (v !== undefined && v !== expected) {
    throw new CheckpointError(
      file,
      `config field '${key}' = ${JSON.stringify(v)} is not supported (flashlab runs ${key} = ${expected})`,
    );
  }
}

export function familyOf(c: Json, file: string): 'gpt2' | 'chatglm2' {
  const type = c.model_type;
  if (type === 'gpt2') return 'gpt2';
  if (type === 'chatglm') return 'chatglm2';
  throw new CheckpointError(file, `model_type ${JSON.stringify(type)} is not supported (expected "gpt2" or "chatglm")`);
}

export function modelConfigFromJson(c: Json, file: string, name: string): ModelConfig {
  const family = familyOf(c, file);
  let cfg: ModelConfig;
  if (family === 'gpt2') {
    const act = c.activation_function;
    if (act !== undefined && act !== 'gelu_new' && act !== 'gelu_pytorch_tanh') {
      throw new CheckpointError(
        file,
        `activation_function ${JSON.stringify(act)} is not supported (flashlab's GPT-2 uses gelu_new)`,
      );
    }
    requireFlag(c, 'scale_attn_by_inverse_layer_idx', false, file);
    requireFlag(c, 'add_cross_attention', false, file);
    requireFlag(c, 'scale_attn_weights', true, file);
    requireFlag(c, 'tie_word_embeddings', true, file);
    const hiddenSize = int(c, 'n_embd', file);
    const numHeads = int(c, 'n_head', file);
    if (hiddenSize % numHeads !== 0) {
      throw new CheckpointError(file, `n_embd ${hiddenSize} is not divisible by n_head ${numHeads}`);
    }
    cfg = {
      family,
      name,
      vocabSize: int(c, 'vocab_size', file),
      hiddenSize,
      numLayers: int(c, 'n_layer', file),
      numHeads,
      numKvHeads: numHeads,
      headDim: hiddenSize / numHeads,
      ffnHiddenSize: c.n_inner === null || c.n_inner === undefined ? 4 * hiddenSize : int(c, 'n_inner', file),
      maxPositions: int(c, 'n_positions', file),
      normEps: positive(c, 'layer_norm_epsilon', file, 1e-5),
    };
  } else {
    requireFlag(c, 'rmsnorm', true, file);
    requireFlag(c, 'add_bias_linear', false, file);
    requireFlag(c, 'add_qkv_bias', true, file);
    requireFlag(c, 'post_layer_norm', true, file);
    requireFlag(c, 'apply_residual_connection_post_layernorm', false, file);
    // ChatGLM2-6B-32K stretches its rotary positions by rope_ratio; the engine implements the plain rotary.
    if (c.rope_ratio !== undefined && c.rope_ratio !== 1) {
      throw new CheckpointError(
        file,
        `config field 'rope_ratio' = ${JSON.stringify(c.rope_ratio)} is not supported (flashlab runs rope_ratio 1)`,
      );
    }
    const numHeads = int(c, 'num_attention_heads', file);
    const hiddenSize = int(c, 'hidden_size', file);
    const multiQuery = c.multi_query_attention !== false;
    const numKvHeads = multiQuery ? int(c, 'multi_query_group_num', file) : numHeads;
    if (numHeads % numKvHeads !== 0) {
      throw new CheckpointError(
        file,
        `num_attention_heads ${numHeads} is not a multiple of multi_query_group_num ${numKvHeads}`,
      );
    }
    const headDim = int(
      c,
      'kv_channels',
      file,
      Number.isInteger(hiddenSize / numHeads) ? hiddenSize / numHeads : undefined,
    );
    if (headDim % 4 !== 0) {
      throw new CheckpointError(
        file,
        `kv_channels ${headDim} must be a multiple of 4 (rotary acts on pairs in half the head)`,
      );
    }
    cfg = {
      family,
      name,
      vocabSize: int(c, 'padded_vocab_size', file),
      hiddenSize,
      numLayers: int(c, 'num_layers', file),
      numHeads,
      numKvHeads,
      headDim,
      ffnHiddenSize: int(c, 'ffn_hidden_size', file),
      maxPositions: int(c, 'seq_length', file),
      normEps: positive(c, 'layernorm_epsilon', file, 1e-5),
    };
  }
  const parsed = ModelConfig.safeParse(cfg);
  if (!parsed.success)
    throw new CheckpointError(file, `config does not describe a valid model: ${parsed.error.message}`);
  return parsed.data;
}
