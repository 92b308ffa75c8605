# Third-party dependencies, all from Debian 12 packages (scripts/install-deps.sh).

find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)
# OpenBLAS built on OpenMP, so BLAS calls and our own OpenMP kernels share one thread pool
# (the pthread build's workers and OpenMP's spinning workers fight over the cores).
set(_openblas_omp ${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
find_library(OPENBLAS_LIBRARY NAMES openblas PATHS /usr/lib/${_openblas_omp} NO_DEFAULT_PATH
             REQUIRED)
find_path(CBLAS_INCLUDE_DIR cblas.h PATHS /usr/include/${_openblas_omp} NO_DEFAULT_PATH
          REQUIRED)
set(BLAS_LIBRARIES ${OPENBLAS_LIBRARY})
find_package(absl REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 REQUIRED)
# xxHash (libxxhash-dev) ships no CMake config: the prefix cache's block hashes use XXH3.
find_library(XXHASH_LIBRARY NAMES xxhash REQUIRED)
find_path(XXHASH_INCLUDE_DIR xxhash.h REQUIRED)
if(PDSERVE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(PDSERVE_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
# gRPC and protobuf (libgrpc++-dev, protobuf-compiler-grpc): the services and their contract.
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
# OpenSSL (libssl-dev): mutual TLS on the KV transport.
find_package(OpenSSL 3 REQUIRED)
find_program(PROTOC_EXECUTABLE protoc REQUIRED)
find_program(GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
# prometheus-cpp (prometheus-cpp-dev): every process's metrics and their text format (metrics/).
find_package(prometheus-cpp CONFIG REQUIRED)
# cpp-httplib (libcpp-httplib-dev): the HTTP servers, /metrics in every process and the router's
# OpenAI API (openai/); the e2e tests use its HTTPS client too.
find_package(PkgConfig REQUIRED)
pkg_check_modules(CPP_HTTPLIB REQUIRED IMPORTED_TARGET GLOBAL cpp-httplib)
