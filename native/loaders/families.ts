// The tensors each architecture's checkpoint must hold, their shapes, and the names of buffers we skip.
// GPT-2 checkpoints exist with and without the 'transformer.' prefix (the original hub upload has none):
// names are normalised to the prefixed form that GPT2LMHeadModel.save_pretrained writes.
import type { ModelConfig } from '../../contracts/models';

export interface TensorPlan {
  /** canonical name -> expected shape */
  expected: Map<string, number[]>;
  /** the name the engine should see for a name found in a file */
  canonical(name: string): string;
  /** buffers and tied copies that are not weights of the engine (the causal-mask buffer, rotary inv_freq, a tied lm_head) */
  skipped(canonicalName: string): boolean;
}

export function tensorPlan(c: ModelConfig): TensorPlan {
  const H = c.hiddenSize;
  const F = c.ffnHiddenSize;
  const expected = new Map<string, number[]>();
  if (c.family === 'gpt2') {
    expected.set('transformer.wte.weight', [c.vocabSize, H]);
    expected.set('transformer.wpe.weight', [c.maxPositions, H]);
    for (let i = 0; i < c.numLayers; i++) {
      const p = `transformer.h.${i}.`;
      expected.set(`${p}ln_1.weight`, [H]);
      expected.set(`${p}ln_1.bias`, [H]);
      // Conv1D stores weights as [in, out]
      expected.set(`${p}attn.c_attn.weight`, [H, 3 * H]);
      expected.set(`${p}attn.c_attn.bias`, [3 * H]);
      expected.set(`${p}attn.c_proj.weight`, [H, H]);
      expected.set(`${p}attn.c_proj.bias`, [H]);
      expected.set(`${p}ln_2.weight`, [H]);
      expected.set(`${p}ln_2.bias`, [H]);
      expected.set(`${p}mlp.c_fc.weight`, [H, F]);
      expected.set(`${p}mlp.c_fc.bias`, [F]);
      expected.set(`${p}mlp.c_proj.weight`, [F, H]);
      expected.set(`${p}mlp.c_proj.bias`, [H]);
    }
    expected.set('transformer.ln_f.weight', [H]);
    expected.set('transformer.ln_f.bias', [H]);
    return {
      expected,
      canonical: (n) => (n.startsWith('transformer.') || n.startsWith('lm_head.') ? n : `transformer.${n}`),
      skipped: (n) => n === 'lm_head.weight' || /^transformer\.h\.\d+\.attn\.(bias|masked_bias)$/.test(n),
    };
  }
  const qkv = (c.numHeads + 2 * c.numKvHeads) * c.headDim;
  expected.set('transformer.embedding.word_embeddings.weight', [c.vocabSize, H]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = `transformer.encoder.layers.${i}.`;
    expected.set(`${p}input_layernorm.weight`, [H]);
    expected.set(`${p}self_attention.query_key_value.weight`, [qkv, H]);
    expected.set(`${p}self_attention.query_key_value.bias`, [qkv]);
    expected.set(`${p}self_attention.dense.weight`, [H, c.numHeads * c.headDim]);
    expected.set(`${p}post_attention_layernorm.weight`, [H]);
    expected.set(`${p}mlp.dense_h_to_4h.weight`, [2 * F, H]);
    expected.set(`${p}mlp.dense_4h_to_h.weight`, [H, F]);
  }
  expected.set('transformer.encoder.final_layernorm.weight', [H]);
  expected.set('transformer.output_layer.weight', [c.vocabSize, H]);
  return {
    expected,
    canonical: (n) => n,
    skipped: (n) => n === 'transformer.rotary_pos_emb.inv_freq',
  };
}
