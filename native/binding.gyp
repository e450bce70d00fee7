# node-gyp build of the engine (scripts/build-native.mjs runs it). The direct g++/nvcc build for hosts without npm
# lives in scripts/build-native.mjs --direct and compiles the same sources. The CUDA backend is compiled by
# build-native.mjs (nvcc) into a static archive; when it has, it sets FLASHLAB_GYP_CUDA_ARCHIVE and
# FLASHLAB_GYP_CUDA_LINK for configure, and the engine is compiled with FLASHLAB_WITH_CUDA and links them.
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
        }],
        ["'<!(node -p \"process.env.FLASHLAB_GYP_CUDA_ARCHIVE ? 'yes' : 'no'\")'=='yes'", {
          "defines": ["FLASHLAB_WITH_CUDA"],
          "libraries": [
            "<!(node -p \"process.env.FLASHLAB_GYP_CUDA_ARCHIVE || ''\")",
            "<!@(node -p \"process.env.FLASHLAB_GYP_CUDA_LINK || ''\")"
          ]
        }]
      ]
    }
  ]
}
