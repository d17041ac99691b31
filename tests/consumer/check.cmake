# ctest script: build tests/consumer against loupe via find_package (after
# cmake --install into a scratch prefix), via add_subdirectory, and as plain
# headers without CMake (one TU defining LOUPE_IMPLEMENTATION), then run it; and
# check that a TU using the pipeline API parses none of the heavy headers.
foreach(mode install subdirectory)
  set(work ${LOUPE_BUILD}/consumer-${mode})
  file(REMOVE_RECURSE ${work})
  if(mode STREQUAL install)
    execute_process(COMMAND ${CMAKE_COMMAND} --install ${LOUPE_BUILD} --prefix ${work}/prefix RESULT_VARIABLE rc OUTPUT_QUIET)
    if(rc)
      message(FATAL_ERROR "cmake --install failed")
    endif()
    set(args -DCMAKE_PREFIX_PATH=${work}/prefix)
  else()
    set(args -DLOUPE_ADD_SUBDIRECTORY=${LOUPE_SOURCE})
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${LOUPE_SOURCE}/tests/consumer -B ${work}/build -DCMAKE_BUILD_TYPE=Release ${args}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(rc)
    message(FATAL_ERROR "configuring the consumer (${mode}) failed:\n${out}")
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${work}/build RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(rc)
    message(FATAL_ERROR "building the consumer (${mode}) failed:\n${out}")
  endif()
  execute_process(COMMAND ${work}/build/consumer RESULT_VARIABLE rc OUTPUT_VARIABLE out)
  if(rc)
    message(FATAL_ERROR "the consumer (${mode}) failed: ${out}")
  endif()
  message(STATUS "${mode}: ${out}")
endforeach()

# Without CMake, stb-style: the application's TUs include the headers, one of them
# also compiles the implementation.
set(work ${LOUPE_BUILD}/consumer-headers)
file(REMOVE_RECURSE ${work})
file(MAKE_DIRECTORY ${work})
file(WRITE ${work}/impl.cpp "#define LOUPE_IMPLEMENTATION\n#include <loupe/loupe.hpp>\n")
execute_process(COMMAND ${CXX} -std=c++17 -O1 -ffp-contract=off -pthread -I${LOUPE_SOURCE}/include -I/usr/include/stb
                        -I/usr/include/eigen3 -DLOUPE_HAVE_EIGEN=1 ${LOUPE_SOURCE}/tests/consumer/main.cpp ${work}/impl.cpp
                        -o ${work}/consumer
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc)
  message(FATAL_ERROR "building the consumer from the headers alone failed:\n${out}")
endif()
execute_process(COMMAND ${work}/consumer RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(rc)
  message(FATAL_ERROR "the consumer (headers) failed: ${out}")
endif()
message(STATUS "headers: ${out}")

# The pipeline API from declarations only: no Eigen, intrinsics, stb_image or <regex> in its include graph.
execute_process(COMMAND ${CXX} -std=c++17 -I${LOUPE_SOURCE}/include -M ${LOUPE_SOURCE}/tests/consumer/pipeline_user.cpp
                RESULT_VARIABLE rc OUTPUT_VARIABLE deps ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "pipeline_user.cpp does not compile from the headers alone:\n${err}")
endif()
foreach(heavy Eigen/ immintrin.h arm_neon.h wasm_simd128.h stb_image.h /regex)
  string(FIND "${deps}" "${heavy}" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "a TU including loupe/pipeline/pipeline.hpp parses ${heavy}: it belongs in an implementation section")
  endif()
endforeach()
message(STATUS "pipeline_user.cpp: declarations only")
