# Compile options applied to pdserve's own targets (never to third-party code).

add_library(pdserve_options INTERFACE)
target_compile_options(pdserve_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wshadow -Wnon-virtual-dtor
  -Wno-error=maybe-uninitialized>)
if(PDSERVE_NATIVE)
  target_compile_options(pdserve_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
endif()
if(PDSERVE_SANITIZE)
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  target_compile_options(pdserve_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_san}>)
  target_link_options(pdserve_options INTERFACE ${_san})
endif()
