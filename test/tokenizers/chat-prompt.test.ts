// ChatGLM2's chat format as THUDM's build_prompt writes it, with [gMASK] sop as ids ahead of the text.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  chatglm2Prompt,
  chatInputIds,
  encodePrompt,
  loadTokenizer,
  transcriptPrompt,
} from '../../native/tokenizers/index';

const dir = join(import.meta.dirname, '..', 'fixtures', 'tokenizers');

test('ChatGLM2 rounds are numbered from 1 and the last one is left open', () => {
  const prompt = chatglm2Prompt([
    { role: 'user', content: '你好' },
    { role: 'assistant', content: '你好！有什么可以帮你？' },
    { role: 'user', content: 'KV cache 是什么？' },
  ]);
  assert.equal(
    prompt,
    '[Round 1]\n\n问：你好\n\n答：你好！有什么可以帮你？\n\n[Round 2]\n\n问：KV cache 是什么？\n\n答：',
  );
  assert.equal(chatglm2Prompt([{ role: 'user', content: 'hi' }]), '[Round 1]\n\n问：hi\n\n答：');
  assert.equal(
    chatglm2Prompt([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'hi' },
    ]),
    'Be brief.\n\n[Round 1]\n\n问：hi\n\n答：',
  );
  assert.throws(() => chatglm2Prompt([{ role: 'assistant', content: 'x' }]), /must follow a user message/);
  assert.throws(
    () =>
      chatglm2Prompt([
        { role: 'user', content: 'x' },
        { role: 'assistant', content: 'y' },
      ]),
    /last message/,
  );
});

test('ChatGLM2 input ids start with [gMASK] sop (sp vocabulary + 1 and + 3)', async () => {
  const tok = await loadTokenizer({ family: 'chatglm2', dir });
  const messages = [{ role: 'user' as const, content: '你好' }];
  const ids = chatInputIds(tok, messages);
  assert.deepEqual(ids.slice(0, 2), [701, 703]);
  assert.deepEqual(ids.slice(2), tok.encode(chatglm2Prompt(messages)));
  assert.equal(tok.decode(ids), chatglm2Prompt(messages));
  // a plain prompt gets the same prefix, as THUDM's tokenizer adds it to every input
  assert.deepEqual(tok.promptPrefix, [701, 703]);
  assert.deepEqual(encodePrompt(tok, 'hi'), [701, 703, ...tok.encode('hi')]);
});

test('GPT-2 continues a plain transcript', async () => {
  const tok = await loadTokenizer({ family: 'gpt2' });
  const messages = [
    { role: 'user' as const, content: 'Hi' },
    { role: 'assistant' as const, content: 'Hello.' },
    { role: 'user' as const, content: 'What is attention?' },
  ];
  assert.equal(transcriptPrompt(messages), 'User: Hi\nAssistant: Hello.\nUser: What is attention?\nAssistant:');
  assert.deepEqual(chatInputIds(tok, messages), tok.encode(transcriptPrompt(messages)));
  assert.deepEqual(tok.promptPrefix, []);
});
