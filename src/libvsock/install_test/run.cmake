# libvsock_install_test: installs the libvsock components of BUILD_DIR into a temporary
# prefix, then builds and runs consumer.cc twice: with find_package(vsock) (shared and
# static) and with pkg-config. Offline; run by CTest as `cmake -P`.
foreach(v BUILD_DIR WORK_DIR CONSUMER_DIR GENERATOR CXX)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run.cmake: -D${v}=... is required")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}")
  endif()
  message(STATUS "ok: ${ARGN}")
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --component libvsock)
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --component libvsock-dev)

foreach(f include/vsock/vsock.h include/vsock/address.h)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()
file(GLOB_RECURSE pc_files ${prefix}/*/vsock.pc)
file(GLOB_RECURSE so_files ${prefix}/*/libvsock.so.0)
if(NOT pc_files OR NOT so_files)
  message(FATAL_ERROR "vsock.pc or libvsock.so.0 not installed under ${prefix}")
endif()
list(GET pc_files 0 pc_file)
list(GET so_files 0 so_file)
get_filename_component(pc_dir ${pc_file} DIRECTORY)
get_filename_component(lib_dir ${so_file} DIRECTORY)

# 1. CMake package.
run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/cmake-build -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/cmake-build -j 2)
run(${WORK_DIR}/cmake-build/consumer ${WORK_DIR})
run(${WORK_DIR}/cmake-build/consumer_static ${WORK_DIR})

# 2. pkg-config.
find_program(PKG_CONFIG NAMES pkg-config pkgconf REQUIRED)
set(ENV{PKG_CONFIG_PATH} ${pc_dir})
execute_process(COMMAND ${PKG_CONFIG} --cflags --libs vsock RESULT_VARIABLE rc
                OUTPUT_VARIABLE flags OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs vsock failed")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
run(${CXX} -std=c++20 ${CONSUMER_DIR}/consumer.cc ${flags} -o ${WORK_DIR}/consumer_pc)
run(${CMAKE_COMMAND} -E env LD_LIBRARY_PATH=${lib_dir} ${WORK_DIR}/consumer_pc ${WORK_DIR})
file(REMOVE_RECURSE ${WORK_DIR})
