# Stand-ins for Zephyr's CMake extensions, for `cmake -P`: they check the arguments a module's
# zephyr/CMakeLists.txt passes (existing files and folders, a library named before its
# sources) and print them as LIBRARY, SOURCE and INCLUDE lines. MODULE_CMAKE names the file.
function(zephyr_library_named name)
  set_property(GLOBAL PROPERTY stub_library ${name})
  message("LIBRARY ${name}")
endfunction()

function(zephyr_library_sources)
  get_property(library GLOBAL PROPERTY stub_library)
  if(NOT library)
    message(FATAL_ERROR "zephyr_library_sources() before zephyr_library_named()")
  endif()
  foreach(source IN LISTS ARGN)
    if(NOT EXISTS "${source}" OR IS_DIRECTORY "${source}")
      message(FATAL_ERROR "no such source file: ${source}")
    endif()
    get_filename_component(real "${source}" REALPATH)
    message("SOURCE ${real}")
  endforeach()
endfunction()

function(zephyr_include_directories)
  foreach(folder IN LISTS ARGN)
    if(NOT IS_DIRECTORY "${folder}")
      message(FATAL_ERROR "no such include folder: ${folder}")
    endif()
    get_filename_component(real "${folder}" REALPATH)
    message("INCLUDE ${real}")
  endforeach()
endfunction()

include(${MODULE_CMAKE})
