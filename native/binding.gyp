# node-gyp build of the engine's CPU build (scripts/build-native.mjs runs it). The direct g++/nvcc build for
# hosts without npm lives in scripts/build-native.mjs --direct and compiles the same sources.
{
  "targets": [
    {
      "target_name": "flashlab_engine",
      "sources": [
        "binding/addon.cpp",
        "src/backend.cpp",
        "src/model.cpp",
        "src/sampler.cpp",
        "src/engine.cpp",
        "src/cpu/cpu_backend.cpp",
        "src/cpu/cpu_matmul.cpp",
        "src/cpu/cpu_attention.cpp"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "build"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "FLASHLAB_VERSION=\"<!(node -p \"require('../package.json').version\")\""
      ],
      "cflags!": ["-fno-exceptions", "-O2", "-O0"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
      "cflags": ["-O3", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-O3", "-fopenmp"],
      "ldflags": ["-fopenmp"],
      "conditions": [
        ["'<!(node -p \"process.env.FLASHLAB_PORTABLE ? 'yes' : 'no'\")'=='no'", {
          "cflags": ["-march=native"], "cflags_cc": ["-march=native"]
        }]
      ]
    }
  ]
}
