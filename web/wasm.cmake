# Included by the top-level CMakeLists.txt: builds web/ (the WebAssembly engine,
# its JS API and the node-run wasm unit tests) with Emscripten's toolchain as an
# external project in <build>/wasm, so `cmake --build build` makes native and
# WASM alike. Site files land in <build>/wasm/dist (tools/serve.mjs serves them).
# Off with -DLOUPE_WASM=OFF; skipped with a note when Emscripten is missing.
option(LOUPE_WASM "also build the WebAssembly engine and the browser demo (needs Emscripten)" ON)
set(LOUPE_WASM_DIST "")
if(LOUPE_WASM AND NOT EMSCRIPTEN)
  find_program(LOUPE_EMCC emcc)
  if(LOUPE_EMCC)
    get_filename_component(_em_real ${LOUPE_EMCC} REALPATH)
    get_filename_component(_em_root ${_em_real} DIRECTORY)
    find_file(LOUPE_EMSCRIPTEN_TOOLCHAIN Emscripten.cmake PATHS ${_em_root}/cmake/Modules/Platform NO_DEFAULT_PATH)
  endif()
  if(NOT LOUPE_EMSCRIPTEN_TOOLCHAIN)
    message(STATUS "loupe: Emscripten not found; the WebAssembly build and browser tests are skipped (apt-get install emscripten)")
  else()
    include(ExternalProject)
    set(LOUPE_WASM_BINARY_DIR ${CMAKE_BINARY_DIR}/wasm)
    set(LOUPE_WASM_DIST ${LOUPE_WASM_BINARY_DIR}/dist)
    set(_loupe_wasm_tests ON)
    if(DEFINED LOUPE_BUILD_TESTS AND NOT LOUPE_BUILD_TESTS)
      set(_loupe_wasm_tests OFF)
    endif()
    ExternalProject_Add(loupe_wasm
      SOURCE_DIR ${CMAKE_CURRENT_LIST_DIR}
      BINARY_DIR ${LOUPE_WASM_BINARY_DIR}
      CMAKE_ARGS -DCMAKE_TOOLCHAIN_FILE=${LOUPE_EMSCRIPTEN_TOOLCHAIN} -DCMAKE_BUILD_TYPE=Release
                 -DLOUPE_WASM_TESTS=${_loupe_wasm_tests}
      BUILD_ALWAYS ON          # the inner build tracks header changes itself
      INSTALL_COMMAND ""
      LOG_CONFIGURE ON)
  endif()
endif()
