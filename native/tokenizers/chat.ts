// Chat prompt formats. ChatGLM2's is THUDM's build_prompt: rounds numbered from 1, each
// "[Round i]\n\n问：{query}\n\n答：{response}\n\n", the last one left open after "答：", and the input ids
// prefixed with the special tokens [gMASK] sop (ids, not text: chatInputIds / encodePrompt add them). ChatGLM2 has no
// system role; system text goes before the first round. GPT-2 was never trained on chat; it gets a plain
// transcript to continue.
import { type Tokenizer, TokenizerError } from './types';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

interface Rounds {
  system: string[];
  rounds: Array<{ query: string; response: string }>;
  query: string;
}

function toRounds(messages: readonly ChatMessage[]): Rounds {
  const system: string[] = [];
  const rounds: Array<{ query: string; response: string }> = [];
  let query: string | null = null;
  for (const [i, m] of messages.entries()) {
    if (m.role === 'system') system.push(m.content);
    else if (m.role === 'user') query = query === null ? m.content : `${query}\n${m.content}`;
    else {
      if (query === null) throw new TokenizerError(`messages[${i}]: an assistant message must follow a user message`);
      rounds.push({ query, response: m.content });
      query = null;
    }
  }
  if (query === null) throw new TokenizerError('the last message must be from the user: there is nothing to answer');
  return { system, rounds, query };
}

/** ChatGLM2's prompt text (without the [gMASK] sop prefix, which are special ids). */
export function chatglm2Prompt(messages: readonly ChatMessage[]): string {
  const { system, rounds, query } = toRounds(messages);
  let prompt = system.length ? `${system.join('\n\n')}\n\n` : '';
  rounds.forEach((r, i) => {
    prompt += `[Round ${i + 1}]\n\n问：${r.query}\n\n答：${r.response}\n\n`;
  });
  return `${prompt}[Round ${rounds.length + 1}]\n\n问：${query}\n\n答：`;
}

/** GPT-2's transcript: one "Role: text" line per message, ending with an open "Assistant:". */
export function transcriptPrompt(messages: readonly ChatMessage[]): string {
  const label = { system: 'System', user: 'User', assistant: 'Assistant' } as const;
  return `${messages.map((m) => `${label[m.role]}: ${m.content}`).join('\n')}\nAssistant:`;
}

/** A prompt's input ids as the family's reference tokenizer builds them (ChatGLM2: [gMASK] sop first). */
export function encodePrompt(tokenizer: Tokenizer, text: string): number[] {
  return [...tokenizer.promptPrefix, ...tokenizer.encode(text)];
}

/** The model's input ids for a conversation, special prefix included. */
export function chatInputIds(tokenizer: Tokenizer, messages: readonly ChatMessage[]): number[] {
  const text = tokenizer.family === 'chatglm2' ? chatglm2Prompt(messages) : transcriptPrompt(messages);
  return encodePrompt(tokenizer, text);
}
