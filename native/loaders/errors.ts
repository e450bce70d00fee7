// The one error type every checkpoint problem becomes: it names the file and, where one is involved, the tensor.
import { basename } from 'node:path';

export class CheckpointError extends Error {
  readonly file: string;
  readonly tensor: string | undefined;

  constructor(file: string, message: string, tensor?: string) {
    super(`${basename(file)}${tensor ? ` (tensor '${tensor}')` : ''}: ${message}`);
    this.name = 'CheckpointError';
    this.file = file;
    this.tensor = tensor;
  }
}
