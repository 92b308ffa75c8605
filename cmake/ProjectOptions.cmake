# Compile options applied to pdserve's own targets (never to third-party code).

add_library(pdserve_options INTERFACE)
target_compile_options(pdserve_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wshadow -Wnon-virtual-dtor
  -Wno-error=maybe-uninitialized>)
# GCC 12 at -O3 reports impossible overlaps inside std::string's own copies (GCC bug 105329):
# kept as a warning, not an error.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  target_compile_options(pdserve_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Wno-error=restrict>)
endif()
if(PDSERVE_NATIVE)
  target_compile_options(pdserve_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
endif()
if(PDSERVE_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  target_compile_options(pdserve_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_san}>)
  target_link_options(pdserve_options INTERFACE ${_san})
endif()
