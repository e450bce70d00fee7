// A chat request is answered on the real engine: text streamed in order in small batches that add up to the
// decoded answer, then one chatEnd with the measured figures; a cancel ends it early with stoppedBy 'cancelled'.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ChatSessions } from '../../agent/chats';
import type { AgentApi } from '../../agent/connection';
import { type ChatDelta, type ChatEnd, ChatRequest } from '../../contracts';
import { loadTokenizer } from '../../native/tokenizers';

function recordingApi() {
  const deltas: ChatDelta[] = [];
  const ends: ChatEnd[] = [];
  let onEnd: (() => void) | undefined;
  const api = {
    chatDelta: async (d: ChatDelta) => {
      deltas.push(d);
    },
    chatEnd: async (e: ChatEnd) => {
      ends.push(e);
      onEnd?.();
    },
  } as unknown as AgentApi;
  const ended = (n: number) =>
    new Promise<void>((resolve) => {
      onEnd = () => ends.length >= n && resolve();
      if (ends.length >= n) resolve();
    });
  return { api, deltas, ends, ended };
}

const request = (over: Partial<ChatRequest> & { requestId: string }) =>
  ChatRequest.parse({
    model: 'gpt2-tiny',
    weights: { kind: 'random', seed: 2 },
    attention: 'fa2',
    kvCache: true,
    tp: 1,
    dtype: 'fp32',
    device: 'cpu',
    sampling: { greedy: true },
    maxNewTokens: 24,
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Why is FlashAttention fast? 为什么？' },
    ],
    ...over,
  });

describe('chat sessions', () => {
  it('streams the answer in order and ends with its figures', async () => {
    const { api, deltas, ends, ended } = recordingApi();
    const chats = new ChatSessions(api, { log() {} });
    chats.start(request({ requestId: 'r1' }));
    await ended(1);
    const [end] = ends;
    assert.equal(end.ok, true, end.error);
    assert.equal(end.requestId, 'r1');
    assert.ok(end.prefillMs !== undefined && end.prefillMs > 0 && (end.tokensPerSec ?? 0) > 0);
    const ids = deltas.flatMap((d) => d.tokenIds);
    assert.equal(ids.length, end.newTokens, 'every generated token was streamed');
    assert.ok(deltas.every((d) => d.requestId === 'r1'));
    const tokenizer = await loadTokenizer({ family: 'gpt2' });
    assert.equal(
      deltas.map((d) => d.text).join(''),
      tokenizer.decode(ids),
      'streamed text adds up to the decoded answer',
    );
    chats.dispose();
  });

  it('answers ChatGLM2 in its prompt format, and one at a time', async () => {
    const { api, ends, ended } = recordingApi();
    const chats = new ChatSessions(api, { log() {} });
    chats.start(request({ requestId: 'g1', model: 'chatglm2-tiny', maxNewTokens: 8 }));
    chats.start(request({ requestId: 'g2', model: 'chatglm2-tiny', maxNewTokens: 8, kvCache: false }));
    await ended(2);
    assert.deepEqual(
      ends.map((e) => [e.requestId, e.ok]),
      [
        ['g1', true],
        ['g2', true],
      ],
    );
    chats.dispose();
  });

  it('cancels a running answer and refuses a conversation that cannot fit', async () => {
    const { api, ends, ended } = recordingApi();
    const chats = new ChatSessions(api, { log() {} });
    chats.start(request({ requestId: 'long', maxNewTokens: 500, kvCache: false }));
    setTimeout(() => chats.cancel('long'), 100);
    await ended(1);
    assert.equal(ends[0].stoppedBy, 'cancelled');
    assert.equal(ends[0].ok, false);

    chats.start(request({ requestId: 'nofit', maxNewTokens: 512 }));
    await ended(2);
    assert.equal(ends[1].stoppedBy, 'error');
    assert.match(ends[1].error ?? '', /maxNewTokens: 512 leaves no room/);
    chats.dispose();
  });
});
