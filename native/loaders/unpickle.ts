// A strict unpickler for torch state dicts. It executes nothing: it understands the handful of opcodes
// torch.save emits for a dict of tensors and three callables (OrderedDict, _rebuild_tensor_v2,
// _rebuild_parameter), and refuses every other opcode or global by name. The result is plain data:
// tensor descriptions pointing at storages, which the caller resolves to byte ranges of the zip.
import { CheckpointError } from './errors';

/** Torch storage classes and the element size and dtype each one holds. */
export const STORAGE_TYPES: Record<string, { dtype: string; itemBytes: number }> = {
  FloatStorage: { dtype: 'F32', itemBytes: 4 },
  HalfStorage: { dtype: 'F16', itemBytes: 2 },
  BFloat16Storage: { dtype: 'BF16', itemBytes: 2 },
  DoubleStorage: { dtype: 'F64', itemBytes: 8 },
  LongStorage: { dtype: 'I64', itemBytes: 8 },
  IntStorage: { dtype: 'I32', itemBytes: 4 },
  ShortStorage: { dtype: 'I16', itemBytes: 2 },
  CharStorage: { dtype: 'I8', itemBytes: 1 },
  ByteStorage: { dtype: 'U8', itemBytes: 1 },
  BoolStorage: { dtype: 'BOOL', itemBytes: 1 },
};

export interface StorageRef {
  kind: 'storage';
  key: string;
  dtype: string;
  itemBytes: number;
  numel: number;
}

export interface TensorRef {
  kind: 'tensor';
  storage: StorageRef;
  storageOffset: number;
  shape: number[];
}

type Global = { kind: 'global'; module: string; name: string };
type OrderedDictObj = { kind: 'dict'; map: Map<string, Value> };
type Mark = { kind: 'mark' };
type Value =
  | string
  | number
  | boolean
  | null
  | Value[]
  | Global
  | StorageRef
  | TensorRef
  | OrderedDictObj
  | Record<string, never>;

// A state dict's pickle takes ~100 bytes per tensor; these caps bound what a hostile one can make us hold.
const MAX_PICKLE_BYTES = 64 * 1024 * 1024;
const MAX_MEMO = 1_000_000;

const OP_NAMES: Record<number, string> = {
  99: 'GLOBAL',
  147: 'STACK_GLOBAL',
  82: 'REDUCE',
  98: 'BUILD',
  105: 'INST',
  111: 'OBJ',
  129: 'NEWOBJ',
  146: 'NEWOBJ_EX',
  80: 'PERSID',
  81: 'BINPERSID',
  130: 'EXT1',
  131: 'EXT2',
  132: 'EXT4',
  83: 'STRING',
  84: 'BINSTRING',
  85: 'SHORT_BINSTRING',
  86: 'UNICODE',
  73: 'INT',
  76: 'LONG',
  70: 'FLOAT',
  71: 'BINFLOAT',
  93: 'EMPTY_LIST',
  97: 'APPEND',
  101: 'APPENDS',
  108: 'LIST',
  100: 'DICT',
  143: 'EMPTY_SET',
  144: 'ADDITEMS',
  145: 'FROZENSET',
  66: 'BINBYTES',
  67: 'SHORT_BINBYTES',
  142: 'BINBYTES8',
  150: 'BYTEARRAY8',
  151: 'NEXT_BUFFER',
  152: 'READONLY_BUFFER',
  141: 'BINUNICODE8',
  48: 'POP',
  49: 'POP_MARK',
  50: 'DUP',
  103: 'GET',
  112: 'PUT',
  139: 'LONG4',
};

function isMark(v: unknown): v is Mark {
  return typeof v === 'object' && v !== null && (v as Mark).kind === 'mark';
}

function asInt(v: Value | Mark, what: string, fail: (m: string) => never): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) fail(`${what} is not an integer`);
  return v as number;
}

function asIntTuple(v: Value | Mark, what: string, fail: (m: string) => never): number[] {
  if (!Array.isArray(v)) fail(`${what} is not a tuple`);
  return (v as Value[]).map((x, i) => asInt(x, `${what}[${i}]`, fail));
}

/**
 * Parses a torch.save data.pkl holding a dict of tensors. Returns tensor name -> TensorRef.
 * `file` names the archive in errors; the tensor named in an error is the dict key being read when it happened.
 */
export function unpickleStateDict(data: Buffer, file: string): Map<string, TensorRef> {
  if (data.length > MAX_PICKLE_BYTES)
    throw new CheckpointError(file, `data.pkl of ${data.length} bytes is implausibly large`);
  let pos = 0;
  let stack: Array<Value | Mark> = [];
  const metastack: Array<Array<Value | Mark>> = [];
  const memo = new Map<number, Value>();
  let root: OrderedDictObj | null = null;
  let currentKey: string | undefined;

  const fail = (message: string): never => {
    throw new CheckpointError(file, `data.pkl at byte ${pos}: ${message}`, currentKey);
  };
  const need = (n: number): void => {
    if (pos + n > data.length) fail('pickle ends in the middle of an opcode (truncated)');
  };
  const pop = (): Value => {
    const v = stack.pop();
    if (v === undefined) fail('stack underflow');
    if (isMark(v)) fail('unexpected MARK on the stack');
    return v as Value;
  };
  const top = (): Value => {
    const v = stack[stack.length - 1];
    if (v === undefined || isMark(v)) fail('stack is empty where a value is needed');
    return v as Value;
  };
  const popMark = (): Value[] => {
    const items = stack;
    if (items.some(isMark)) fail('MARK inside a marked sequence');
    const prev = metastack.pop();
    if (prev === undefined) fail('no MARK to pop to');
    stack = prev as Array<Value | Mark>;
    return items as Value[];
  };
  // The dict key being read: a string pushed at an even position right after the root dict's SETITEMS mark.
  const push = (v: Value): void => {
    if (typeof v === 'string' && root && metastack.length === 1 && stack.length % 2 === 0) {
      const below = metastack[0];
      if (below[below.length - 1] === root) currentKey = v;
    }
    stack.push(v);
  };
  const readUtf8 = (n: number): string => {
    need(n);
    try {
      const s = new TextDecoder('utf-8', { fatal: true }).decode(data.subarray(pos, pos + n));
      pos += n;
      return s;
    } catch {
      return fail('string is not valid UTF-8');
    }
  };
  const readLine = (): string => {
    const nl = data.indexOf(0x0a, pos);
    if (nl < 0 || nl - pos > 256) fail('GLOBAL name is not terminated');
    const s = data.subarray(pos, nl).toString('latin1');
    pos = nl + 1;
    return s;
  };
  const global = (module: string, name: string): Global => {
    const allowed =
      (module === 'collections' && name === 'OrderedDict') ||
      (module === 'torch._utils' && (name === '_rebuild_tensor_v2' || name === '_rebuild_parameter')) ||
      (module === 'torch' && name in STORAGE_TYPES);
    if (!allowed) fail(`refusing pickle global '${module}.${name}': a state dict uses only tensors and OrderedDict`);
    return { kind: 'global', module, name };
  };
  const setItem = (target: Value, key: Value, value: Value): void => {
    if (typeof target !== 'object' || target === null || (target as OrderedDictObj).kind !== 'dict')
      fail('SETITEM on something that is not a dict');
    if (typeof key !== 'string') fail('dict key is not a string');
    const map = (target as OrderedDictObj).map;
    if (map.has(key as string)) fail(`duplicate key '${key}'`);
    map.set(key as string, value);
  };

  const rebuildTensor = (args: Value[]): TensorRef => {
    if (args.length < 6 || args.length > 7) fail(`_rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`);
    const [storage, offsetV, sizeV, strideV] = args;
    if (typeof storage !== 'object' || storage === null || (storage as StorageRef).kind !== 'storage') {
      fail('_rebuild_tensor_v2 was not given a storage');
    }
    const s = storage as StorageRef;
    const storageOffset = asInt(offsetV, 'storage offset', fail);
    const shape = asIntTuple(sizeV, 'size', fail);
    const stride = asIntTuple(strideV, 'stride', fail);
    if (shape.length !== stride.length)
      fail(`size ${JSON.stringify(shape)} and stride ${JSON.stringify(stride)} differ in rank`);
    let numel = 1;
    for (const d of shape) {
      if (d < 0) fail(`size ${JSON.stringify(shape)} has a negative dimension`);
      numel *= d;
      if (!Number.isSafeInteger(numel)) fail(`size ${JSON.stringify(shape)} is too large`);
    }
    // Only row-major contiguous tensors are loaded as flat byte ranges; dims of size 1 may carry any stride.
    let expect = 1;
    for (let i = shape.length - 1; i >= 0; i--) {
      if (shape[i] !== 1 && stride[i] !== expect) {
        fail(`stride ${JSON.stringify(stride)} is not contiguous for size ${JSON.stringify(shape)}`);
      }
      expect *= shape[i];
    }
    if (storageOffset < 0 || storageOffset + numel > s.numel) {
      fail(`tensor of ${numel} elements at storage offset ${storageOffset} does not fit its storage of ${s.numel}`);
    }
    const hooks = args[5];
    const hooksEmpty =
      typeof hooks === 'object' &&
      hooks !== null &&
      (hooks as OrderedDictObj).kind === 'dict' &&
      (hooks as OrderedDictObj).map.size === 0;
    if (!hooksEmpty) fail('tensor carries backward hooks');
    return { kind: 'tensor', storage: s, storageOffset, shape };
  };

  const call = (fn: Value, args: Value): Value => {
    if (typeof fn !== 'object' || fn === null || (fn as Global).kind !== 'global')
      fail('REDUCE of something that is not a callable');
    if (!Array.isArray(args)) fail('REDUCE arguments are not a tuple');
    const g = fn as Global;
    const a = args as Value[];
    if (g.module === 'collections' && g.name === 'OrderedDict') {
      if (a.length !== 0) fail('OrderedDict is called with arguments');
      const d: OrderedDictObj = { kind: 'dict', map: new Map() };
      if (!root) root = d;
      return d;
    }
    if (g.name === '_rebuild_tensor_v2') return rebuildTensor(a);
    if (g.name === '_rebuild_parameter') {
      // _rebuild_parameter(data, requires_grad, backward_hooks): a Parameter is its tensor for our purposes.
      if (a.length !== 3 || typeof a[0] !== 'object' || a[0] === null || (a[0] as TensorRef).kind !== 'tensor') {
        fail('_rebuild_parameter was not given a tensor');
      }
      return a[0];
    }
    return fail(`'${g.module}.${g.name}' is not callable in a state dict`);
  };

  for (;;) {
    if (pos >= data.length) fail('pickle ends without STOP (truncated)');
    const op = data[pos++];
    switch (op) {
      case 0x80: // PROTO
        need(1);
        if (data[pos] > 5) fail(`unsupported pickle protocol ${data[pos]}`);
        pos += 1;
        break;
      case 0x95: // FRAME (protocol 4): an 8-byte length hint only
        need(8);
        pos += 8;
        break;
      case 0x7d: // EMPTY_DICT
        {
          const d: OrderedDictObj = { kind: 'dict', map: new Map() };
          if (!root) root = d;
          push(d);
        }
        break;
      case 0x29: // EMPTY_TUPLE
        push([]);
        break;
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x58: // BINUNICODE
        need(4);
        {
          const n = data.readUInt32LE(pos);
          pos += 4;
          push(readUtf8(n));
        }
        break;
      case 0x8c: // SHORT_BINUNICODE
        need(1);
        {
          const n = data[pos++];
          push(readUtf8(n));
        }
        break;
      case 0x4b: // BININT1
        need(1);
        push(data[pos]);
        pos += 1;
        break;
      case 0x4d: // BININT2
        need(2);
        push(data.readUInt16LE(pos));
        pos += 2;
        break;
      case 0x4a: // BININT
        need(4);
        push(data.readInt32LE(pos));
        pos += 4;
        break;
      case 0x8a: // LONG1
        need(1);
        {
          const n = data[pos++];
          if (n > 8) fail(`LONG1 of ${n} bytes is out of range`);
          need(n);
          let v = 0n;
          for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[pos + i]);
          if (n > 0 && data[pos + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
          pos += n;
          if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER))
            fail(`integer ${v} is out of range`);
          push(Number(v));
        }
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x4e: // NONE
        push(null);
        break;
      case 0x74: // TUPLE
        push(popMark());
        break;
      case 0x85: // TUPLE1
        push([pop()]);
        break;
      case 0x86: // TUPLE2
        {
          const b = pop();
          const a = pop();
          push([a, b]);
        }
        break;
      case 0x87: // TUPLE3
        {
          const c = pop();
          const b = pop();
          const a = pop();
          push([a, b, c]);
        }
        break;
      case 0x71: // BINPUT
      case 0x72: // LONG_BINPUT
      case 0x94: // MEMOIZE
        {
          let idx: number;
          if (op === 0x71) {
            need(1);
            idx = data[pos++];
          } else if (op === 0x72) {
            need(4);
            idx = data.readUInt32LE(pos);
            pos += 4;
          } else idx = memo.size;
          if (idx >= MAX_MEMO) fail(`memo index ${idx} is out of range`);
          memo.set(idx, top());
        }
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
        {
          let idx: number;
          if (op === 0x68) {
            need(1);
            idx = data[pos++];
          } else {
            need(4);
            idx = data.readUInt32LE(pos);
            pos += 4;
          }
          const v = memo.get(idx);
          if (v === undefined) fail(`memo entry ${idx} was never stored`);
          push(v as Value);
        }
        break;
      case 0x63: // GLOBAL
        {
          const module = readLine();
          const name = readLine();
          push(global(module, name));
        }
        break;
      case 0x93: // STACK_GLOBAL
        {
          const name = pop();
          const module = pop();
          if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL of non-strings');
          push(global(module as string, name as string));
        }
        break;
      case 0x51: // BINPERSID
        {
          const pid = pop();
          if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== 'storage')
            fail('persistent id is not a torch storage reference');
          const [, cls, key, location, numelV] = pid as Value[];
          if (
            typeof cls !== 'object' ||
            cls === null ||
            (cls as Global).kind !== 'global' ||
            !((cls as Global).name in STORAGE_TYPES)
          ) {
            fail('persistent id does not name a torch storage class');
          }
          if (typeof key !== 'string' || !/^[A-Za-z0-9_]+$/.test(key))
            fail(`storage key ${JSON.stringify(key)} is not a plain name`);
          if (typeof location !== 'string') fail('storage location is not a string');
          const numel = asInt(numelV, 'storage size', fail);
          if (numel < 0) fail('storage size is negative');
          const t = STORAGE_TYPES[(cls as Global).name];
          push({ kind: 'storage', key: key as string, dtype: t.dtype, itemBytes: t.itemBytes, numel });
        }
        break;
      case 0x52: // REDUCE
        {
          const args = pop();
          const fn = pop();
          push(call(fn, args));
        }
        break;
      case 0x62: // BUILD
        {
          // OrderedDict state (a state_dict's `_metadata` attribute): irrelevant to the weights, dropped.
          const state = pop();
          const target = top();
          if (typeof target !== 'object' || target === null || (target as OrderedDictObj).kind !== 'dict')
            fail('BUILD on something that is not an OrderedDict');
          if (state !== null && (typeof state !== 'object' || (state as OrderedDictObj).kind !== 'dict'))
            fail('BUILD with a state that is not a dict');
        }
        break;
      case 0x73: // SETITEM
        {
          const v = pop();
          const k = pop();
          setItem(top(), k, v);
        }
        break;
      case 0x75: // SETITEMS
        {
          const items = popMark();
          if (items.length % 2 !== 0) fail('SETITEMS with an odd number of items');
          const target = top();
          for (let i = 0; i < items.length; i += 2) {
            currentKey = typeof items[i] === 'string' ? (items[i] as string) : currentKey;
            setItem(target, items[i], items[i + 1]);
          }
        }
        break;
      case 0x2e: {
        // STOP
        const result = pop();
        if (stack.length !== 0 || metastack.length !== 0) fail('values left on the stack at STOP');
        if (pos !== data.length) fail(`${data.length - pos} bytes after STOP`);
        if (typeof result !== 'object' || result === null || (result as OrderedDictObj).kind !== 'dict')
          fail('pickle is not a dict');
        const out = new Map<string, TensorRef>();
        for (const [k, v] of (result as OrderedDictObj).map) {
          currentKey = k;
          // Nested dicts (e.g. a whole training checkpoint) or plain numbers are not a state dict.
          if (typeof v !== 'object' || v === null || (v as TensorRef).kind !== 'tensor') fail('value is not a tensor');
          out.set(k, v as TensorRef);
        }
        return out;
      }
      default: {
        const name = OP_NAMES[op] ?? `0x${op.toString(16).padStart(2, '0')}`;
        pos -= 1;
        return fail(`refusing pickle opcode ${name}: it has no place in a torch state dict`);
      }
    }
  }
}
