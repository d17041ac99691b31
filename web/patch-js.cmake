# Post-link fix of Emscripten 3.1.6's pthreads runtime (cmake -DJS=file -P patch-js.cmake):
# its C++-exception bookkeeping does Atomics.add/sub(HEAP32, ptr >> 2, …), a *signed* shift,
# so an exception object allocated above 2 GB (a big model is loaded) gives a negative index
# and "RangeError: Invalid atomic access index" instead of the error message. Every other
# heap access in the generated code already uses >>> (CAN_ADDRESS_2GB). Idempotent.
file(READ ${JS} js)
string(REGEX REPLACE "(Atomics\\.[a-zA-Z]+\\([A-Za-z0-9_]+(\\(\\))?,[^,;]*[^>])>>2," "\\1>>>2," fixed "${js}")
if(NOT fixed STREQUAL js)
  file(WRITE ${JS} "${fixed}")
endif()
string(REGEX MATCH "Atomics\\.[a-zA-Z]+\\([A-Za-z0-9_]+(\\(\\))?,[^,;]*[^>]>>2," left "${fixed}")
if(left)
  message(FATAL_ERROR "${JS}: an Atomics call with a signed >>2 index is left: ${left}")
endif()
