// Worker-thread entry for tokenize.ts: loads the tokenizer once from workerData, then
// tokenizes one file per 'job' message and answers with progress, 'done' or 'error'.
import { parentPort, workerData } from 'node:worker_threads';
import { loadTokenizer, type TokenizerSpec, type TextTokenizer } from './tokenizer.js';
import { tokenizeFile, type FileJob, type FileProgress, type FileResult } from './tokenize_file.js';

export type ToWorker = { kind: 'job'; index: number; job: FileJob };
export type FromWorker =
  | { kind: 'progress'; progress: FileProgress }
  | { kind: 'done'; index: number; result: FileResult }
  | { kind: 'error'; index: number; message: string };

const port = parentPort!;
const spec = (workerData as { tokenizer: TokenizerSpec }).tokenizer;
let tokenizer: Promise<TextTokenizer> | null = null;

port.on('message', async (msg: ToWorker) => {
  const send = (m: FromWorker): void => port.postMessage(m);
  try {
    tokenizer ??= loadTokenizer(spec);
    const result = await tokenizeFile(msg.job, await tokenizer, (progress) => send({ kind: 'progress', progress }));
    send({ kind: 'done', index: msg.index, result });
  } catch (e) {
    send({ kind: 'error', index: msg.index, message: (e as Error).message });
  }
});
