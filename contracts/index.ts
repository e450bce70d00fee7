export * from './agent';
export * from './engine';
export * from './experiment';
export * from './models';
export * from './bench';
