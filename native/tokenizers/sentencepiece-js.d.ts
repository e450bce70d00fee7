// Types for @agnai/sentencepiece-js, which ships none: only what sentencepiece.ts uses.
declare module '@agnai/sentencepiece-js' {
  export class SentencePieceProcessor {
    load(path: string): Promise<void>;
    encodeIds(text: string): number[];
    decodeIds(ids: number[]): string;
  }
  const api: { SentencePieceProcessor: typeof SentencePieceProcessor };
  export default api;
}
