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
string(TOLOWER "${PDSERVE_SANITIZE}" _sanitize)
if(_sanitize STREQUAL "thread")
  # ThreadSanitizer. Everything compiled here is instrumented, generated gRPC code included:
  # gRPC's callback reactors are header templates whose atomics order the reactions, and an
  # uninstrumented copy of them picked by the linker would hide that order from TSan.
  #
  # absl::Mutex reports its locks to TSan only when Abseil itself is compiled with
  # -fsanitize=thread (the annotations are in mutex.cc), so Debian's libabsl would make every
  # ABSL_GUARDED_BY member look racy. scripts/tsan-abseil.sh builds Debian's own Abseil source
  # with TSan into PDSERVE_TSAN_ABSL; find_package(absl) (cmake/Dependencies.cmake, and gRPC's
  # config through it) takes that one. Its shared libraries carry Debian's SONAMEs, and the
  # binaries find them first through an old-style DT_RPATH (--disable-new-dtags), which, unlike
  # DT_RUNPATH, also applies to the libabsl_*.so that Debian's gRPC asks for: the process loads
  # one Abseil, the instrumented one.
  set(PDSERVE_TSAN_ABSL "${CMAKE_BINARY_DIR}/_deps/absl" CACHE PATH
      "Abseil built with -fsanitize=thread (scripts/tsan-abseil.sh)")
  if(NOT EXISTS "${PDSERVE_TSAN_ABSL}/lib/cmake/absl/abslConfig.cmake")
    message(FATAL_ERROR "PDSERVE_SANITIZE=thread needs an Abseil built with TSan in "
                        "${PDSERVE_TSAN_ABSL}: run scripts/tsan-abseil.sh ${PDSERVE_TSAN_ABSL} "
                        "(scripts/build.sh tsan does)")
  endif()
  set(absl_DIR "${PDSERVE_TSAN_ABSL}/lib/cmake/absl" CACHE PATH "" FORCE)
  # OpenMP: GCC's libgomp is not instrumented, so TSan cannot see its barriers and reports every
  # hand-off between a parallel region's threads. LLVM's libomp (libomp-14-dev) implements the
  # same GOMP ABI and, with its Archer tool (libarcher.so, which libomp loads by default, found
  # beside it through the binaries' RPATH), tells TSan about OpenMP's synchronization. Linked
  # ahead of libgomp, it takes the GOMP_* and omp_* calls of pdserve and of OpenBLAS; races inside
  # parallel regions are still reported.
  find_library(PDSERVE_TSAN_LIBOMP NAMES libomp.so.5 PATHS /usr/lib/llvm-14/lib NO_DEFAULT_PATH
               REQUIRED)
  get_filename_component(_omp_dir "${PDSERVE_TSAN_LIBOMP}" DIRECTORY)
  if(NOT EXISTS "${_omp_dir}/libarcher.so")
    message(FATAL_ERROR "PDSERVE_SANITIZE=thread: no libarcher.so beside ${PDSERVE_TSAN_LIBOMP}")
  endif()
  set(_san -fsanitize=thread -fno-omit-frame-pointer)
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${_san}>")
  add_link_options(${_san} -Wl,--disable-new-dtags)
  link_libraries(${PDSERVE_TSAN_LIBOMP})
elseif(_sanitize MATCHES "^(address|on|1|true|yes|y)$")
  set(_san -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  target_compile_options(pdserve_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_san}>)
  target_link_options(pdserve_options INTERFACE ${_san})
elseif(PDSERVE_SANITIZE)
  message(FATAL_ERROR "PDSERVE_SANITIZE=${PDSERVE_SANITIZE}: use OFF, address (or ON) or thread")
endif()
