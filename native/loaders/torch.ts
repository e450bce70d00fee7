// PyTorch .bin (torch.save zip archive) reader. Placeholder until the zip + pickle reader lands.
import { CheckpointError } from './errors';
import type { CheckedFile } from './file';
import type { TensorLocation } from './tensor';

export async function readTorchZipCheckpoint(
  file: CheckedFile,
): Promise<{ locations: TensorLocation[]; unloadable: Map<string, string> }> {
  throw new CheckpointError(file.path, 'PyTorch .bin checkpoints are not readable yet');
}
