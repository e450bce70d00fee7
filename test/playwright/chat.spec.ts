// The chat playground against the embedded CPU agent: streaming with stop and live tokens/s from the streamed token
// ids, per-answer figures, ChatGLM2's random weights shown as visible ids, side by side with the first differing
// token marked.
import { expect, test } from '@playwright/test';
import { screenshot, waitForAgent } from './helpers';

test.describe.configure({ mode: 'serial' });

test.beforeAll(async ({ request }) => {
  await waitForAgent(request);
});

test('an answer streams and the stop button stops it', async ({ page }) => {
  await page.goto('/chat');
  await expect(page.getByTestId('random-weights-notice')).toContainText('Random weights produce noise');
  // GPT-2 at full size on the CPU is slow enough per token to stop mid-answer.
  await page.locator('#single-model').selectOption('gpt2');
  await page.locator('#single-max').fill('400');
  await page.getByLabel('Message').fill('Tell me a long story');
  await page.getByRole('button', { name: 'Send' }).click();
  const streaming = page.getByTestId('streaming-answer');
  await expect(streaming).toBeVisible();
  await expect(streaming).not.toContainText('waiting for the first token', { timeout: 120_000 });
  // The token ids reach the page: a live token count, and a live rate in tokens (not characters) per second.
  await expect(page.getByTestId('live-tokens')).toContainText(/^\d+ tokens$/);
  await expect(streaming).toContainText(/[\d.]+k? tok\/s \(live\)/, { timeout: 60_000 });
  await expect(streaming).not.toContainText('chars/s');
  await expect(page.getByTestId('stop')).toBeEnabled();
  await page.getByTestId('stop').click();
  const answer = page.locator('.msg.assistant[data-status="cancelled"]');
  await expect(answer).toBeVisible({ timeout: 60_000 });
  await expect(answer).toContainText('stopped');
  await expect(answer).toContainText('gpt2 · FA2 + KV cache, fp32 · cpu');
});

test('each answer shows its method, TTFT and tokens/s, and the conversation is saved', async ({ page }) => {
  await page.goto('/chat');
  await page.locator('#single-attention').selectOption('naive');
  await page.locator('#single-max').fill('12');
  await page.getByLabel('Message').fill('Hello there');
  await page.getByLabel('Message').press('Enter');
  const answer = page.locator('.msg.assistant[data-status="done"]').last();
  await expect(answer).toBeVisible({ timeout: 120_000 });
  await expect(answer).toContainText('gpt2-tiny · naive + KV cache, fp32 · cpu');
  await expect(answer).toContainText(/TTFT \d/);
  await expect(answer).toContainText(/tok\/s/);
  await expect(page.locator('.session-list')).toContainText('Hello there');
  await screenshot(page, 'chat');
});

test('ChatGLM2 with random weights and no tokenizer.model shows its ids as visible text, with the notice', async ({
  page,
}) => {
  await page.goto('/chat');
  await page.getByRole('button', { name: 'New' }).click();
  await page.locator('#single-model').selectOption('chatglm2-tiny');
  await page.locator('#single-max').fill('24');
  await page.getByLabel('Message').fill('你好');
  await page.getByLabel('Message').press('Enter');
  const answer = page.locator('.msg.assistant[data-status="done"]').last();
  await expect(answer).toBeVisible({ timeout: 120_000 });
  await expect(answer).toContainText('chatglm2-tiny');
  // Random weights sample from all 65024 rows; the byte-level stand-in maps only 256 of them to text.
  await expect(answer).toContainText(/⟨id \d+⟩/);
  await expect(answer).not.toContainText('(no text)');
  await answer.screenshot({ path: test.info().outputPath('chatglm2-random-answer.png') });
  await expect(page.getByTestId('random-weights-notice')).toContainText('Random weights produce noise');
  await expect(page.getByTestId('random-weights-notice')).toContainText('ids it has no text for show as ⟨id N⟩');
});

test('side by side: one prompt through two methods, both streaming, differences marked', async ({ page }) => {
  await page.goto('/chat?mode=side');
  await expect(page.getByRole('tab', { name: 'Side by side' })).toHaveAttribute('aria-selected', 'true');
  await page.locator('#shared-max').fill('24');
  await page.getByLabel('Prompt').fill('The quick brown fox');
  await page.getByRole('button', { name: 'Run both' }).click();
  for (const side of ['A', 'B']) {
    const a = page.getByTestId(`answer-${side}`).locator('.msg');
    await expect(a).toHaveAttribute('data-status', 'done', { timeout: 120_000 });
    await expect(page.getByTestId(`rate-${side}`)).toContainText('tok/s');
    // Every generated token's id came through the stream: as many ids as the engine reports tokens.
    const tokens = page.getByTestId(`tokens-${side}`);
    await expect(tokens).toHaveText(/^\d+ tokens$/);
    const reported = Number((await tokens.textContent())?.split(' ')[0]);
    expect(reported).toBeGreaterThan(0);
    await expect(tokens).toHaveAttribute('data-streamed', String(reported));
  }
  await expect(page.getByTestId('answer-A')).toContainText('naive');
  await expect(page.getByTestId('answer-B')).toContainText('FA2 + KV cache');
  const verdict = page.getByTestId('sbs-diff');
  await expect(verdict).toContainText(/identical|First difference at token \d+ \(A: id \d+, B: id \d+\)/);
  if ((await verdict.textContent())?.includes('First difference'))
    await expect(page.locator('mark.diff')).toHaveCount(2);

  // A different model on B (GPT-2 at full size, same tokenizer) makes the answers part: the mark appears in both.
  await page.locator('#B-model').selectOption('gpt2');
  await page.getByRole('button', { name: 'Run both' }).click();
  // GPT-2 at full size keeps B streaming for a while: the pair is running, the previous answers are gone.
  await expect(page.getByRole('button', { name: 'Stop both' })).toBeEnabled();
  for (const side of ['A', 'B'])
    await expect(page.getByTestId(`answer-${side}`).locator('.msg')).toHaveAttribute('data-status', 'done', {
      timeout: 120_000,
    });
  // Same tokenizer (GPT-2's), different weights: compared by token id, and that token marked in both answers.
  await expect(verdict).toContainText(/First difference at token \d+ \(A: id \d+, B: id \d+\)/);
  await expect(verdict).not.toContainText('so far');
  await expect(page.locator('mark.diff')).toHaveCount(2);
  const index = Number(await verdict.getAttribute('data-token'));
  await expect(page.locator('mark.diff').first()).toHaveAttribute('title', new RegExp(`token ${index + 1}, id \\d+`));
  await screenshot(page, 'chat-side-by-side');
});
