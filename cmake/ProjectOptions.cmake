# Compile options applied to pdserve's own targets (never to third-party code).

add_library(pdserve_options INTERFACE)
target_compile_options(pdserve_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor>)
if(PDSERVE_WERROR)
  target_compile_options(pdserve_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-Werror -Wno-error=maybe-uninitialized>)
  # GCC 12 at -O3 reports impossible overlaps inside std::string's own copies (GCC bug 105329):
  # kept as a warning, not an error.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(pdserve_options INTERFACE
      $<$<COMPILE_LANGUAGE:CXX>:-Wno-error=restrict>)
  endif()
endif()
# The ISA every object file targets. x86-64-v2 (SSE4.2, POPCNT; Nehalem and later, 2009+) runs on
# every x86-64 server and VM CPU model still in service, where v3 (AVX2) would exclude Atom-class
# and some virtual CPUs; the speed of v3/v4 comes from the dispatched kernels instead.
if(PDSERVE_NATIVE)
  set(PDSERVE_CPU_TARGET native)
else()
  set(PDSERVE_CPU_TARGET x86-64-v2)
endif()
target_compile_options(pdserve_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-march=${PDSERVE_CPU_TARGET}>)
message(STATUS "pdserve: CPU target -march=${PDSERVE_CPU_TARGET}, kernels dispatched at run time "
               "to x86-64-v2/v3/v4")
if(PDSERVE_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  target_compile_options(pdserve_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_san}>)
  target_link_options(pdserve_options INTERFACE ${_san})
endif()
